"""`liveml query|sql|tables history|training-set|backfill|parity`: the offline store's commands."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import click
import pyarrow as pa
from rich.table import Table

from liveml.cli import _cfg, _emit, console, main, out, tables

TABLE_ROWS = 50


def _records(arrow: pa.Table) -> list[dict[str, Any]]:
    rows = arrow.to_pylist()
    for row in rows:
        for k, v in row.items():
            if hasattr(v, "isoformat"):
                row[k] = v.isoformat()
    return rows


def _print_arrow(arrow: pa.Table, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(_records(arrow), indent=2, default=str))
    elif fmt == "csv":
        buf = io.StringIO()
        arrow.to_pandas().to_csv(buf, index=False)
        click.echo(buf.getvalue(), nl=False)
    else:
        t = Table(*arrow.column_names)
        for row in _records(arrow):
            t.add_row(*("" if v is None else str(v) for v in row.values()))
        out.print(t)
        console.print(f"{arrow.num_rows} rows")


def _format(fmt: str | None, as_json: bool) -> str:
    return "json" if as_json else (fmt or "table")


@main.command()
@click.argument("table")
@click.option("--where", default=None, help="Filter, pushed down to Iceberg: \"fare > 20 and company = 'X'\".")
@click.option("--columns", default=None, help="Comma-separated columns (default: all).")
@click.option("--snapshot", "snapshot_id", type=int, default=None, help="Read this snapshot (see tables history).")
@click.option("--as-of", default=None, metavar="TIME",
              help="Read the table as it was then: ISO-8601 (Z, an offset or UTC; a date) or epoch ms.")
@click.option("--limit", type=int, default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_context
def query(ctx, table, where, columns, snapshot_id, as_of, limit, fmt, as_json) -> None:
    """Rows of an Iceberg TABLE (namespace.table), optionally as of a snapshot or a time."""
    from liveml.offline import OfflineStore

    store = OfflineStore.from_config(_cfg(ctx))
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    shown = _format(fmt, as_json)
    if shown == "table" and limit is None:  # a terminal table of millions of rows helps nobody
        limit = TABLE_ROWS
        console.print(f"first {TABLE_ROWS} rows (--limit N for more, --format csv|json for all)", highlight=False)
    arrow = store.scan(table, where=where, columns=cols, snapshot_id=snapshot_id, as_of=as_of, limit=limit)
    _print_arrow(arrow, shown)


@main.command()
@click.argument("statement")
@click.option("--snapshot", "pins", multiple=True, metavar="TABLE=ID", help="Read TABLE at snapshot ID.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sql(ctx, statement, pins, fmt, as_json) -> None:
    """Read-only SQL (DuckDB) over Iceberg tables, named namespace.table."""
    from liveml.offline import OfflineStore, QueryError

    snapshots = {}
    for pin in pins:
        name, _, snap = pin.partition("=")
        if not snap.isdigit():
            raise QueryError(f"--snapshot {pin!r} must look like raw.trips=1234")
        snapshots[name] = int(snap)
    arrow = OfflineStore.from_config(_cfg(ctx)).sql(statement, snapshots)
    _print_arrow(arrow, _format(fmt, as_json))


@tables.command("history")
@click.argument("table")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tables_history(ctx, table, as_json) -> None:
    """Snapshots of TABLE: id, time, operation, rows added and total."""
    from liveml.offline import OfflineStore

    rows = OfflineStore.from_config(_cfg(ctx)).history(table)

    def render(rs):
        t = Table("snapshot_id", "time", "operation", "added_rows", "total_rows", "")
        for r in rs:
            t.add_row(str(r["snapshot_id"]), r["time"], str(r["operation"]), str(r["added_rows"]),
                      str(r["total_rows"]), "current" if r["current"] else "")
        out.print(t)

    _emit(rows, as_json, render)


@main.group("training-set")
def training_set_group() -> None:
    """Point-in-time-correct training sets, written to training.<name>."""


@training_set_group.command("build")
@click.option("--name", "set_name", default="tips", show_default=True, help="Declared training set.")
@click.option("--output", default=None, help="Write to training.<OUTPUT> instead of training.<name>.")
@click.option("--snapshot", "snapshot_id", type=int, default=None,
              help="Label-table snapshot; the other inputs are read as they stood while it was current.")
@click.option("--snapshot-ids", default=None, help="JSON {table: snapshot id} pinning every input exactly.")
@click.option("--from-lineage", default=None, metavar="TABLE[@SNAPSHOT]",
              help="Rebuild with the inputs a recorded build used, e.g. training.tips@123.")
@click.option("--source", type=click.Choice(["stream", "backfill"]), default="stream", show_default=True,
              help="Feature rows written by the stream (features.*) or by a backfill (backfill.*).")
@click.option("--memory-limit", default=None, help="DuckDB memory limit, e.g. 512MB.")
@click.option("--slice-rows", type=int, default=250_000, show_default=True,
              help="Labels per time slice; DuckDB's memory follows the slice, not the table.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def training_set_build(ctx, set_name, output, snapshot_id, snapshot_ids, from_lineage, source, memory_limit,
                       slice_rows, as_json) -> None:
    """Join every label with the features as they stood at its decision time; record the input snapshots."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from iceberg_schemas.training import training_set
    from liveml.errors import LivemlError
    from liveml.offline import OfflineStore, QueryError
    from liveml.training_set import build_training_set, lineage

    try:
        spec = training_set(set_name)
    except KeyError as exc:
        raise LivemlError(str(exc.args[0])) from None
    store = OfflineStore.from_config(_cfg(ctx), memory_limit=memory_limit)
    pins = None
    if snapshot_ids:
        try:
            pins = {k: None if v is None else int(v) for k, v in json.loads(snapshot_ids).items()}
        except (ValueError, AttributeError, TypeError):
            raise QueryError(f"--snapshot-ids {snapshot_ids!r} must be a JSON object of table -> snapshot id "
                             "(null: the table as it was before its first commit, empty)") from None
    spec_version = None
    given = [f for f, v in (("--snapshot", snapshot_id), ("--snapshot-ids", snapshot_ids),
                            ("--from-lineage", from_lineage)) if v is not None]
    if len(given) > 1:
        raise QueryError(f"give one of --snapshot, --snapshot-ids and --from-lineage, not {' and '.join(given)}: "
                         "each pins the inputs on its own")
    if from_lineage:
        name, _, snap = from_lineage.partition("@")
        recorded = lineage(store, name, int(snap) if snap else None)
        pins, source = recorded["snapshot_ids"], recorded["feature_source"]
        spec_version = recorded.get("spec_version")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  disable=as_json or not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"building training.{output or set_name}")
        result = build_training_set(store, spec, as_of_snapshot=snapshot_id, snapshot_ids=pins, name=output,
                                    source=source, slice_rows=slice_rows,
                                    **({"spec_version": spec_version} if spec_version else {}),
                                    progress=lambda n: bar.update(task, description=f"{n:,} rows written"))

    def render(r):
        console.print(f"[bold]{r['table']}[/] snapshot {r['snapshot_id']}: {r['rows']:,} rows "
                      f"({r['positives']:,} positive), spec v{r['spec_version']}, {r['seconds']} s")
        for t, s in r["snapshot_ids"].items():
            console.print(f"  {t:<32} @ {s if s is not None else 'none (no commit yet: read as empty)'}")
        for line in _exclusion_lines(r, spec):
            console.print(line, highlight=False, soft_wrap=True)

    _emit(result, as_json, render)


def _exclusion_lines(built: dict[str, Any], spec) -> list[str]:
    """What a build left out, for a person: a count per reason, what it means, keys to look up and how."""
    from liveml.training_set import EXCLUSION_REASONS

    excluded = {k: n for k, n in built.get("excluded", {}).items() if n}
    if not excluded:
        return []
    lines = [f"left out {sum(excluded.values()):,} of {built['labels']:,} labelled keys, counted in `excluded` "
             "(not an error):"]
    examples = built.get("excluded_examples", {})
    for reason, n in excluded.items():
        shown = f"; e.g. {', '.join(map(str, examples[reason]))}" if examples.get(reason) else ""
        lines.append(f"  {reason:<18} {n:>8,}  {EXCLUSION_REASONS.get(reason, '')}{shown}")
    first = next((e[0] for e in examples.values() if e), None)
    if len(spec.keys) == 1 and isinstance(first, str):
        lines.append(f"look one up: liveml query {spec.label_table} --where \"{spec.keys[0]} = '{first}'\"")
    return lines


def _views(names: str | None):
    from iceberg_schemas.features import FEATURE_VIEWS, view
    from liveml.errors import LivemlError

    if not names:
        return list(FEATURE_VIEWS)
    try:
        return [view(n.strip()) for n in names.split(",") if n.strip()]
    except KeyError as exc:
        raise LivemlError(str(exc.args[0])) from None


@main.command()
@click.option("--from", "start", default=None, metavar="TIME",
              help="First event time (ISO-8601 or epoch ms); default: the first raw event.")
@click.option("--to", "end", default=None, metavar="TIME",
              help="Last event time (ISO-8601 or epoch ms); default: the last raw event.")
@click.option("--views", default=None, help="Comma-separated views (default: all).")
@click.option("--parallelism", type=int, default=2, show_default=True)
@click.option("--redis", is_flag=True, help="Also write each entity's latest backfilled values to Redis.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backfill(ctx, start, end, views, parallelism, redis, as_json) -> None:
    """Recompute feature views from the raw Iceberg tables (Flink batch, the stream's SQL) into backfill.*"""
    from liveml import backfill as backfill_mod

    cfg = _cfg(ctx)
    result = backfill_mod.run(cfg, _views(views), start, end, parallelism, redis,
                              status=None if as_json else (lambda s: console.print(s, highlight=False)))

    def render(r):
        console.print(f"backfilled {r['from']} .. {r['to']} (spec v{r['spec_version']}): {r['events']:,} events "
                      f"in {r['seconds']} s ({r['events_per_s']:,} events/s)")
        for name, n in r["rows"].items():
            console.print(f"  backfill.{name:<24} {n:,} rows")

    _emit(result, as_json, render)


@main.command()
@click.option("--from", "start", default=None, metavar="TIME",
              help="First event time (ISO-8601 or epoch ms); default: what both sides cover.")
@click.option("--to", "end", default=None, metavar="TIME", help="Last event time (ISO-8601 or epoch ms).")
@click.option("--views", default=None, help="Comma-separated views (default: all).")
@click.option("--examples", type=int, default=5, show_default=True, help="Mismatching rows to show per view.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def parity(ctx, start, end, views, examples, as_json) -> None:
    """Compare the stream's feature rows with a backfill's over the same events; exit 1 on any mismatch."""
    from liveml.offline import OfflineStore
    from liveml.parity import parity as run_parity

    result = run_parity(OfflineStore.from_config(_cfg(ctx)), _views(views), start, end, examples=examples)

    def render(r):
        t = Table("view", "from", "to", "compared", "mismatches", "stream only", "backfill only", "values",
                  "duplicates (stream/backfill)")
        for v in r["views"]:
            t.add_row(v["view"], str(v["from"]), str(v["to"]), f"{v['compared']:,}", str(v["mismatches"]),
                      str(v["stream_only"]), str(v["backfill_only"]), str(v["value_mismatches"]),
                      f"{v['stream_duplicates']}/{v['backfill_duplicates']}")
        out.print(t)
        for v in r["views"]:
            for ex in v["examples"]:
                console.print(f"  {v['view']}: {json.dumps(ex, default=str)}", highlight=False)
            if v.get("note"):
                console.print(f"  {v['view']}: {v['note']}", highlight=False)

    _emit(result, as_json, render)
    if result["mismatches"]:
        sys.exit(1)
