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
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
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
    """Start the local stack (default: catalog kafka redis flink prometheus). Idempotent."""
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
    """Stop what `liveml up` started, by pid. Harmless when nothing runs."""
    from liveml.stack import launcher

    result = launcher.down(_cfg(ctx), services)

    def render(d: dict) -> None:
        for name, r in d["services"].items():
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
    """Create every declared table, or evolve it in place. Idempotent."""
    from iceberg_schemas.registry import SchemaConflict, ensure_tables
    from liveml.catalog import open_catalog

    try:
        results = ensure_tables(open_catalog(_cfg(ctx)))
    except SchemaConflict as exc:
        raise LivemlError(str(exc)) from None
    data = [r.__dict__ for r in results]

    def render(rows: list[dict]) -> None:
        for r in rows:
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
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("job")
@click.argument("job_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--print-command", is_flag=True, help="Print the `flink run` command instead of running it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, job: str, job_args: tuple[str, ...], print_command: bool, as_json: bool) -> None:
    """Submit a job (e.g. `proof`) to the running Flink cluster with every jar and the venv's Python."""
    import shlex

    from liveml import flink

    cfg = _cfg(ctx)
    if print_command:
        click.echo(shlex.join(flink.run_command(cfg, job, job_args)))
        return
    result = flink.submit(cfg, job, job_args)
    data = {"job": job, "job_id": result["job_id"], "command": result["command"]}
    _emit(data, as_json, lambda d: console.print(f"submitted {job}: job id {d['job_id']} "
                                                 f"(see `liveml jobs`, {cfg.flink.rest_url})"))


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
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a Flink job by id."""
    from liveml import flink

    flink.cancel_job(_cfg(ctx), job_id)
    console.print(f"cancel requested for {job_id}")


# --- the proof of the stack ----------------------------------------------------------------------------
@main.command()
@click.option("--rows", default=200, show_default=True, help="Events the proof sends through the stack.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def demo(ctx: click.Context, rows: int, as_json: bool) -> None:
    """Bring the stack up, create the tables, run the proof job Kafka -> Flink -> Iceberg, and check it."""
    from liveml import demo as demo_mod

    result = demo_mod.run(_cfg(ctx), rows, log=None if as_json else console.print)
    _emit(result, as_json, lambda d: demo_mod.render(d, out))
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
