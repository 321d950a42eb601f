"""`liveml demo`: the main job end to end (:mod:`liveml.demo`), or with ``--proof`` the stack's proof job."""

from __future__ import annotations

import sys

import click

from liveml.cli import _cfg, _emit, console, main, out


@main.command()
@click.option("--quick", is_flag=True, help="A short run: 3,000 historical trips, 150 training steps, 40 s live.")
@click.option("--proof", is_flag=True, help="Run the foundation's proof job instead (Kafka -> Flink -> Iceberg).")
@click.option("--rows", default=200, show_default=True, help="With --proof: events the proof sends.")
@click.option("--down", is_flag=True, help="Stop the stack at the end (by default it stays up, and the jobs run).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def demo(ctx: click.Context, quick: bool, proof: bool, rows: int, down: bool, as_json: bool) -> None:
    """The main job on the real trips: stack, jobs, history, training, live predictions, and a summary.

    Each step prints as it goes; a failing step stops the demo with the log to read and the command that
    retries it. The stack and the jobs stay up afterwards, so the commands it prints work."""
    cfg = _cfg(ctx)
    log = (lambda m: None) if as_json else (lambda m: console.print(m, highlight=False))
    if proof:
        from liveml import proof as proof_mod

        result = proof_mod.run(cfg, rows, log=None if as_json else console.print)
        _emit(result, as_json, lambda d: proof_mod.render(d, out))
        if down:
            from liveml.stack import launcher

            launcher.down(cfg)
        if not result["ok"]:
            sys.exit(1)
        return

    from liveml import demo as demo_mod

    settings = demo_mod.Settings.quick() if quick else demo_mod.Settings()
    result = demo_mod.run(cfg, settings, log, down=down)
    from liveml.demo_summary import render

    _emit(result, as_json, lambda d: render(d, out))
    if not result["ok"]:
        sys.exit(1)
