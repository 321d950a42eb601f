"""The `liveml` command. Thin: it parses arguments, loads config and calls the modules that do the work.

Every command that reports takes ``--json``; that output is part of the interface (see README).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from liveml.config import LivemlConfig, load_config
from liveml.errors import LivemlError

console = Console(stderr=True)
out = Console()


def _emit(data: Any, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


class _Group(click.Group):
    """Turn our errors into one clear message and an exit code, never a stack trace."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LivemlError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default: liveml.yaml, or $LIVEML_CONFIG).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Live ML platform: streaming features, continuous training, live predictions."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def _cfg(ctx: click.Context) -> LivemlConfig:
    if "cfg" not in ctx.obj:
        ctx.obj["cfg"] = load_config(ctx.obj.get("config_path"))
    return ctx.obj["cfg"]


# --- config and the stack ------------------------------------------------------------------------------
@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as JSON.")
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Print the effective config (file, then LIVEML_* variables)."""
    data = _cfg(ctx).to_public_dict()
    _emit(data, as_json, lambda d: out.print_json(json.dumps(d, default=str)))


@main.command()
@click.argument("services", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def up(ctx: click.Context, services: tuple[str, ...], as_json: bool) -> None:
    """Start the local stack (default: catalog kafka redis flink prometheus alertmanager). Idempotent."""
    from liveml.stack import launcher

    cfg = _cfg(ctx)
    t0 = time.monotonic()

    def progress(name: str, outcome: str, took: float) -> None:
        if not as_json:
            console.print(f"  {name:<11} {outcome:<11} {took:6.1f}s")

    result = launcher.up(cfg, services, progress)
    total = round(time.monotonic() - t0, 2)
    _emit({"services": result, "seconds": total}, as_json,
          lambda d: console.print(f"stack up in {total:.1f}s — `liveml status` shows addresses"))


@main.command()
@click.argument("services", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def down(ctx: click.Context, services: tuple[str, ...], as_json: bool) -> None:
    """Stop what `liveml up` started, by pid. Harmless when nothing runs.

    Running Flink jobs are first stopped with a savepoint, so `liveml up` then `liveml submit` resumes them."""
    from liveml.stack import launcher

    result = launcher.down(_cfg(ctx), services)

    def render(d: dict) -> None:
        for name, r in d["services"].items():
            for job in r.get("jobs", []):
                where = f": {job['savepoint']}" if job.get("savepoint") else ""
                console.print(f"  job {job['job_id']} ({job.get('name')}) {job['outcome']}{where}", highlight=False)
            extra = f" (ports still open: {r['ports_still_open']})" if r["ports_still_open"] else ""
            console.print(f"  {name:<11} {r['outcome']}{extra}")

    _emit({"services": result}, as_json, render)


@main.command()
@click.argument("services", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, services: tuple[str, ...], as_json: bool) -> None:
    """Show each service: up or down, address, pid."""
    from liveml.stack import launcher

    result = launcher.status(_cfg(ctx), services)

    def render(d: dict) -> None:
        t = Table("service", "up", "address", "pid", "detail")
        for name, s in d["services"].items():
            detail = f"{s.get('taskmanagers', '')} TaskManager(s)" if name == "flink" else ""
            t.add_row(name, "[green]up[/]" if s["up"] else "[red]down[/]", s["address"], str(s["pid"] or ""),
                      detail)
        out.print(t)

    _emit({"services": result}, as_json, render)


# --- tables --------------------------------------------------------------------------------------------
@main.group()
def tables() -> None:
    """Iceberg tables declared in iceberg_schemas/."""


@tables.command("create")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tables_create(ctx: click.Context, as_json: bool) -> None:
    """Create every declared table and Kafka topic, or evolve a table in place. Idempotent.

    Topics too, so a job submitted before its producers start finds its source (liveml/topics.py).
    With --json: one row per table, then one per topic (``"kind": "topic"``)."""
    from iceberg_schemas.registry import SchemaConflict, ensure_tables
    from liveml.catalog import open_catalog
    from liveml.topics import ensure_topics

    cfg = _cfg(ctx)
    topics = ensure_topics(cfg)  # first: with Kafka down, the error names it before the catalog is touched
    try:
        results = ensure_tables(open_catalog(cfg))
    except SchemaConflict as exc:
        raise LivemlError(str(exc)) from None
    data = [{"kind": "table", **r.__dict__} for r in results] + [t.as_dict() for t in topics]

    def render(rows: list[dict]) -> None:
        for r in rows:
            if r["kind"] == "topic":
                drift = "" if r["partitions"] == r["declared_partitions"] else \
                    f" (declared {r['declared_partitions']}; left as it is)"
                console.print(f"  {'topic ' + r['topic']:<32} {r['action']}, {r['partitions']} partition(s){drift}")
            else:
                extra = f" +{r['added_columns']}" if r["added_columns"] else ""
                console.print(f"  {r['table']:<32} {r['action']}{extra}")

    _emit(data, as_json, render)


@tables.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tables_list(ctx: click.Context, as_json: bool) -> None:
    """List tables with their row count and current snapshot."""
    from liveml.catalog import describe_tables, open_catalog

    rows = describe_tables(open_catalog(_cfg(ctx)))

    def render(rs: list[dict]) -> None:
        t = Table("table", "rows", "snapshot_id")
        for r in rs:
            t.add_row(r["name"], str(r["rows"]), str(r["snapshot_id"] or ""))
        out.print(t)

    _emit(rows, as_json, render)


# --- Flink jobs ----------------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True},
              short_help="Submit a job (features, enrich, feedback, proof, backfill) to the Flink cluster.")
@click.argument("job")
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--fresh", is_flag=True, help="Start without the job's saved state (Kafka from the offsets its "
                                             "consumer group committed); its windows start empty.")
@click.option("--allow-non-restored-state", is_flag=True,
              help="Resume even if the saved state has operators the job no longer has (dropping theirs).")
@click.option("--print-command", is_flag=True, help="Print the `flink run` command instead of running it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, job: str, job_args: tuple[str, ...], fresh: bool, allow_non_restored_state: bool,
           print_command: bool, as_json: bool) -> None:
    """Submit a job (e.g. `features`) to the running Flink cluster with every jar and the venv's Python.

    An unbounded run of features, enrich, feedback or proof resumes from the newest savepoint (`liveml cancel`,
    `liveml down`) or retained checkpoint of that job, and says which; --fresh starts without it. A job
    whose source topic does not exist is refused (`liveml tables create` makes them)."""
    import shlex

    from liveml import flink

    cfg = _cfg(ctx)
    if print_command:
        plan = flink.state_plan(flink.job_config(cfg, job_args), job, job_args, fresh)
        point = plan.get("point")
        click.echo(shlex.join(flink.run_command(cfg, job, job_args, restore=point.path if point else None,
                                                allow_non_restored_state=allow_non_restored_state)))
        return
    result = flink.submit(cfg, job, job_args, fresh=fresh, allow_non_restored_state=allow_non_restored_state)
    data = {"job": job, "job_id": result["job_id"], "command": result["command"], "state": result["state"]}
    _emit(data, as_json, lambda d: console.print(f"submitted {job}: job id {d['job_id']}, starting "
                                                 f"{d['state']['start']} (see `liveml jobs`, {cfg.flink.rest_url})",
                                                 highlight=False, soft_wrap=True))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(ctx: click.Context, as_json: bool) -> None:
    """List Flink jobs through the REST API."""
    from liveml import flink

    rows = flink.list_jobs(_cfg(ctx))

    def render(rs: list[dict]) -> None:
        t = Table("id", "name", "state")
        for r in rs:
            t.add_row(r["id"], r["name"], r["state"])
        out.print(t)

    _emit(rows, as_json, render)


@main.command()
@click.argument("job_id")
@click.option("--hard", is_flag=True, help="Cancel without a savepoint (the next submit resumes from the job's "
                                            "latest retained checkpoint).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the savepoint.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, job_id: str, hard: bool, timeout: float, as_json: bool) -> None:
    """Stop a Flink job by id: with a savepoint the next `liveml submit` resumes from, or --hard.

    A job that keeps no state (a bounded run, a batch job) is cancelled; so is one whose savepoint fails,
    which then resumes from its latest retained checkpoint."""
    from liveml import job_state

    result = job_state.stop(_cfg(ctx), job_id, hard=hard, timeout=timeout)

    def render(d: dict) -> None:
        where = f": savepoint {d['savepoint']}" if d.get("savepoint") else ""
        if d.get("savepoint_error"):
            where += f" (the savepoint failed: {d['savepoint_error']})"
        if d.get("retained_checkpoint"):
            where += f"; its latest retained checkpoint is {d['retained_checkpoint']}"
        console.print(f"{job_id} {d['outcome']} in {d['seconds']:.1f} s{where}", highlight=False, soft_wrap=True)

    _emit(result, as_json, render)


# --- replay and features ------------------------------------------------------------------------------
@main.command()
@click.option("--rate", type=float, default=None, help="Cap, in events per second.")
@click.option("--speedup", type=float, default=None, help="Compress event time by this factor.")
@click.option("--limit", type=int, default=None, help="Stop after N events.")
@click.option("--amplify", type=int, default=0, help="Resample K copies of the real rows with new times and ids.")
@click.option("--trips-per-s", type=float, default=1000.0, show_default=True,
              help="With --amplify: event-time density of the resampled trips (they start now).")
@click.option("--since", "since", default=None, metavar="DURATION",
              help="With --amplify: the resampled trips start this long ago (e.g. 30m), and only events from "
                   "now on are sent: a live stream joined mid-flight, trips under way end at once.")
@click.option("--for", "for_", default=None, metavar="DURATION",
              help="Stop sending after this much wall time (e.g. 90s); with --speedup 1, a live stream.")
@click.option("--drift", default=None, metavar="SCENARIO",
              help="Shift one distribution of the real data: fare_up, card_share_up or tips_down.")
@click.option("--bad-fraction", type=float, default=0.0, help="Corrupt this share of trip events (DLQ drills).")
@click.option("--label-delay", default="15m", show_default=True, metavar="DURATION",
              help="How long (event time) after its trip ends a tip becomes known, on topic labels.")
@click.option("--seed", type=int, default=0)
@click.option("--wait", is_flag=True, help="Then wait until the feature job has committed the labels sent to "
                                            "Iceberg (labels.trips), so a training set built next sees them.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def replay(ctx: click.Context, rate, speedup, limit, amplify, trips_per_s, since, for_, drift, bad_fraction,
           label_delay, seed, wait, as_json: bool) -> None:
    """Produce the real Chicago taxi trips (start, end, and later the label) into Kafka, in event-time order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from flink_jobs import replay as rp
    from liveml.topics import ensure_topics

    if drift is not None and drift not in rp.DRIFT_SCENARIOS:
        raise click.BadParameter(f"{drift!r} is not one of {sorted(rp.DRIFT_SCENARIOS)}", param_hint="--drift")
    cfg = _cfg(ctx)
    ensure_topics(cfg)  # the declared partitions and retention, not the broker's auto-created defaults
    from iceberg_schemas.features import window_seconds

    def duration(value: str | None, flag: str) -> int | None:
        try:
            return None if value is None else window_seconds(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} must look like 90s, 30m or 2h", param_hint=flag) from None

    since_s, for_s = duration(since, "--since"), duration(for_, "--for")
    label_delay_s = duration(label_delay, "--label-delay")
    if since_s and not amplify:
        raise click.BadParameter("needs --amplify: the real rows keep their own 2013-2016 times", param_hint="--since")
    now_ms = int(time.time() * 1000)
    events = rp.build_events(amplify_k=amplify, drift=drift, seed=seed, trips_per_s=trips_per_s,
                             start_ms=now_ms - since_s * 1000 if since_s else None, label_delay_s=label_delay_s)
    origin_ms = None
    if since_s:  # a live stream: from the wall clock's now (building the events took a moment), each at its time
        origin_ms = int(time.time() * 1000)
        events = rp.from_now(events, origin_ms)
    total = min(limit, len(events)) if limit else len(events)
    producer = rp.kafka_producer(cfg.kafka.bootstrap_servers)
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[eps]}"),
                  TimeRemainingColumn(), console=console, disable=as_json) as progress:
        task = progress.add_task("replay", total=total, eps="")
        t0 = time.monotonic()

        def tick(done: int) -> None:
            progress.update(task, completed=done, eps=f"{done / max(time.monotonic() - t0, 1e-6):,.0f} ev/s")

        stats = rp.replay(events, producer, topic_prefix=cfg.kafka.topic_prefix, speedup=speedup, rate=rate,
                          limit=limit, bad_fraction=bad_fraction, seed=seed, on_progress=tick, duration_s=for_s,
                          origin_ms=origin_ms)
    data = {**{k: v for k, v in stats.__dict__.items() if k != "corrupted"},
            "events_per_s": round(stats.sent / max(stats.seconds, 1e-6), 1)}
    if wait:
        from liveml.ingest import wait_committed

        sent = events[:stats.sent]
        label_ids = [e.key for e in sent if e.topic == rp.LABELS_TOPIC]
        trip_ids = sorted({e.key for e in sent if e.topic == rp.TRIPS_TOPIC})
        trip_events = sum(e.topic == rp.TRIPS_TOPIC for e in sent)
        if not as_json:
            console.print(f"waiting for the feature job to commit {trip_events:,} trip events and "
                          f"{len(label_ids):,} labels to Iceberg")
        data.update(wait_committed(cfg, label_ids, trip_events=trip_events, trip_ids=trip_ids,
                                   log=None if as_json else console.print))
    _emit(data, as_json, lambda d: console.print(
        f"sent {d['sent']} events ({d['trips_events']} trip events, {d['labels']} labels, {d['bad']} corrupted) "
        f"in {d['seconds']:.1f}s, {d['events_per_s']:,.0f} ev/s"))


@main.group()
def features() -> None:
    """Feature views and the online store."""


@features.command("list")
@click.option("--json", "as_json", is_flag=True)
def features_list(as_json: bool) -> None:
    """Every feature view, declared in iceberg_schemas/features.py."""
    from iceberg_schemas.features import FEATURE_VIEWS

    rows = [{"view": v.name, "entity": v.entity, "features": v.feature_names(), "table": v.table,
             "ttl_s": v.ttl_s, "window": v.window, "source": v.source, "owner": v.owner,
             "description": v.description} for v in FEATURE_VIEWS]

    def render(rs: list[dict]) -> None:
        t = Table("view", "entity", "features", "table", "ttl_s")
        for r in rs:
            t.add_row(r["view"], r["entity"], ", ".join(r["features"]), r["table"], str(r["ttl_s"]))
        out.print(t)

    _emit(rows, as_json, render)


@features.command("get")
@click.argument("entities", nargs=-1, required=True)
@click.option("--view", "view_names", multiple=True, help="View(s) to read (default: every view of that entity).")
@click.option("--now-ms", type=int, default=None, help="Read as of this time (TTL is checked against it).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def features_get(ctx: click.Context, entities: tuple[str, ...], view_names: tuple[str, ...], now_ms: int | None,
                 as_json: bool) -> None:
    """Latest feature values of ENTITY from the online store, with event time and age; expired reads as such."""
    from iceberg_schemas.features import FEATURE_VIEWS, view
    from liveml.online import open_online_store

    views = [view(v) for v in view_names] if view_names else list(FEATURE_VIEWS)
    store = open_online_store(_cfg(ctx).redis.url)
    rows = [r.as_dict() for v in views for r in store.get(v, list(entities), now_ms=now_ms)]

    def render(rs: list[dict]) -> None:
        t = Table("view", "entity", "status", "age_s", "values")
        for r in rs:
            age = "" if r["age_s"] is None else f"{r['age_s']:.1f}"
            t.add_row(r["view"], r["entity"], r["status"], age, json.dumps(r["values"]))
        out.print(t)

    _emit(rows, as_json, render)


from liveml import cli_offline  # noqa: E402,F401  (registers query, sql, training-set, backfill, parity)
from liveml import cli_serving  # noqa: E402,F401  (registers serve, predict, models)
from liveml import cli_training  # noqa: E402,F401  (registers train)
from liveml import cli_demo  # noqa: E402,F401  (registers demo)
from liveml import cli_report  # noqa: E402,F401  (registers report)
from liveml import cli_monitor  # noqa: E402,F401  (registers monitor)

if __name__ == "__main__":  # pragma: no cover
    main()
