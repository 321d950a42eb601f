"""`liveml monitor`: quality per model version and drift, recomputed from pinned snapshots (:mod:`liveml.monitor`).

`liveml up monitor` runs it in the background (the stack service ``monitor``); this command runs it in the
foreground, or once with ``--once``."""

from __future__ import annotations

import json
import logging

import click

from liveml.cli import _cfg, _emit, main, out


@main.command()
@click.option("--once", is_flag=True, help="Run one cycle and print its summary (no /metrics server).")
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON (without --once: one JSON line per cycle).")
@click.pass_context
def monitor(ctx, once: bool, as_json: bool) -> None:
    """Compute monitoring.quality (estimated and realised, per window, model version and label) and
    monitoring.drift from predictions.trips and monitoring.outcomes, every monitor.interval_s, serving the
    gauges on /metrics (prometheus.metrics_base_port + monitor.metrics_port_offset). A cycle whose input
    snapshots have not changed writes nothing; a missing input table is waited for."""
    from liveml.monitor import run_forever, run_once, status_line

    cfg = _cfg(ctx)
    if once:
        summary = run_once(cfg)
        _emit(summary, as_json, lambda d: out.print(status_line(d), highlight=False, soft_wrap=True))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_cycle = (lambda s: click.echo(json.dumps(s, default=str), nl=True)) if as_json else None
    run_forever(cfg, on_cycle=on_cycle)
