"""`liveml report`: the loop's quality, drift, freshness, latency, dead letters and label delays as one
self-contained HTML file (:mod:`liveml.report`)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import click

from liveml.cli import _cfg, _emit, console, main, out


@main.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: LIVEML_HOME/reports/report-<UTC time>.html).")
@click.option("--since", default=None, metavar="TIME",
              help="First event time shown (ISO-8601 or epoch ms); default: everything.")
@click.option("--until", default=None, metavar="TIME", help="Event time shown up to, exclusive.")
@click.option("--json", "as_json", is_flag=True, help="Print each section's status and key numbers as JSON.")
@click.pass_context
def report(ctx, out_path, since, until, as_json) -> None:
    """Write one HTML file (plots embedded, no script) of quality per model version, drift, skew, feature
    freshness, latency, dead letters, label delays and controller decisions, read as `liveml sql` reads."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from liveml.offline import OfflineStore, parse_time
    from liveml.report import build_report, write_report

    cfg = _cfg(ctx)
    for value in (since, until):
        if value is not None:
            parse_time(value)  # a bad time fails here, before any table is read (QueryError names the spellings)
    if out_path is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_path = cfg.home_file("reports", f"report-{stamp}.html")
    store = OfflineStore.from_config(cfg)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  disable=as_json or not sys.stderr.isatty()) as bar:
        task = bar.add_task("reading tables")
        built = build_report(store, cfg, since, until,
                             progress=lambda m: bar.update(task, description=f"report: {m}"))
        bar.update(task, description="report: writing HTML")
        path = write_report(built, out_path)
    summary = {"out": str(path), **built.summary()}

    def render(d):
        for sid, sec in d["sections"].items():
            colour = {"ok": "green", "no_data": "yellow", "unavailable": "yellow"}.get(sec["status"], "red")
            note = f"  {sec['note']}" if sec["note"] else ""
            console.print(f"  [{colour}]{sec['status']:<11}[/] {sec['title']}{note}", highlight=False,
                          soft_wrap=True)
        out.print(f"report written to {d['out']}", highlight=False)

    _emit(summary, as_json, render)
