"""`liveml serve|predict|models`: the model server, driven the way an operator drives TF Serving."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from liveml.cli import _cfg, _emit, console, main, out
from liveml.errors import LivemlError
from liveml.model_labels import history_path, latest_version, load_history, model_config, run_client, set_label


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def serve(ctx, flags) -> None:
    """Run the model server in the foreground. Takes every flag of tensorflow_model_server (--port,
    --rest_api_port, --model_name, --model_base_path, --model_config_file, --enable_batching,
    --rest_api_enable_cors_support, --rest_api_timeout_in_ms, ...; as --flag=value or --flag value; the
    list is serving/flags.py); without model flags it serves liveml.yaml's model config."""
    from liveml.stack.serving import ensure_model_config
    from serving.server import main as server_main

    cfg = _cfg(ctx)
    args = list(flags)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if not given & {"--model_config_file", "--model_base_path", "--model_name"}:
        args.append(f"--model_config_file={ensure_model_config(cfg)}")
    if "--port" not in given:
        args.append(f"--port={cfg.serving.grpc.rsplit(':', 1)[1]}")
    if "--rest_api_port" not in given:
        args.append(f"--rest_api_port={cfg.serving.rest.rsplit(':', 1)[1]}")
    sys.exit(server_main(args))


@main.command()
@click.option("--model", default=None, help="Model name (default: serving.model_name).")
@click.option("--version", "version", type=int, default=None)
@click.option("--label", default=None, help="Version label, e.g. stable or canary.")
@click.option("--signature", default="serving_default", show_default=True)
@click.option("--json", "features_json", required=True, metavar="JSON",
              help='Raw features: {"fare": 12.5, ...}, one value or a list per input. The answer is JSON too.')
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Deadline in seconds.")
@click.pass_context
def predict(ctx, model, version, label, signature, features_json, timeout) -> None:
    """Call Predict on the model server (gRPC) with raw features; prints the outputs and the version as JSON.

    Without a model, version or label to answer, it says which is missing and the command that serves one."""
    from serving.client import PredictionClient

    cfg = _cfg(ctx)
    try:
        features = missing_as_the_model_reads_it(json.loads(features_json))
    except json.JSONDecodeError as exc:
        raise LivemlError(f"--json is not JSON: {exc}") from None

    async def call():
        async with PredictionClient(cfg.serving.grpc, timeout_s=timeout) as client:
            return await client.predict(features, model=model or cfg.serving.model_name, version=version,
                                        label=label, signature=signature)

    try:
        r = run_client(call())
    except (ValueError, KeyError) as exc:
        raise LivemlError(str(exc)) from None
    data = {"model": r.model, "version": r.version, "signature": r.signature, "latency_ms": round(r.latency_ms, 3),
            "outputs": {k: v.tolist() for k, v in r.outputs.items()}}
    click.echo(json.dumps(data, indent=2, default=str))


def missing_as_the_model_reads_it(features: dict[str, Any]) -> dict[str, Any]:
    """A ``null`` feature becomes what ``serving_default`` reads as missing (NaN, "" or -1), as the enrichment
    job sends it, so a row copied from ``predictions.trips`` scores as it scored in the stream. Features the
    training set does not declare are passed as given."""
    from tfx_pipeline.features import RAW_KIND, missing_serving_value

    return {k: (missing_serving_value(k) if v is None and k in RAW_KIND else v) for k, v in features.items()}


@main.group()
def models() -> None:
    """Model versions under the base path, what serves them, and their labels."""


@models.command("list")
@click.option("--model", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list(ctx, model, as_json) -> None:
    """Every version on disk: state on the server, labels, and the metrics and lineage the pusher wrote."""
    from serving.client import PredictionClient
    from serving.model_config import versions_on_disk

    cfg = _cfg(ctx)
    config = model_config(cfg)
    rows = []
    for entry in config.model_config_list.config:
        if model and entry.name != model:
            continue
        states: dict[int, str] = {}

        async def fetch():
            from tensorflow_serving.apis import get_model_status_pb2

            async with PredictionClient(cfg.serving.grpc, timeout_s=3.0) as client:
                status = await client.status(entry.name)
                for st in status.model_version_status:
                    states[st.version] = get_model_status_pb2.ModelVersionStatus.State.Name(st.state)

        with contextlib.suppress(LivemlError):  # server down or model not loaded: listed, state unknown
            run_client(fetch())
        labels = dict(entry.version_labels)
        for v in versions_on_disk(entry.base_path):
            vdir = Path(entry.base_path) / str(v)
            lineage = json.loads((vdir / "lineage.json").read_text()) if (vdir / "lineage.json").is_file() else {}
            rows.append({"name": entry.name, "version": v, "labels": sorted(k for k, x in labels.items() if x == v),
                         "state": states.get(v, "NOT_LOADED"), "metrics": lineage.get("metrics", {}),
                         "lineage": lineage, "path": str(vdir)})

    def render(rs):
        t = Table("model", "version", "labels", "state", "auc")
        for r in rs:
            t.add_row(r["name"], str(r["version"]), ",".join(r["labels"]), r["state"],
                      str(r["metrics"].get("auc", "")))
        out.print(t)

    _emit(rows, as_json, render)


@models.command("promote")
@click.argument("version")
@click.option("--label", default="stable", show_default=True)
@click.option("--model", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_promote(ctx, version, label, model, as_json) -> None:
    """Point LABEL at VERSION (a number, or `latest`: the newest pushed) on the running server
    (HandleReloadConfigRequest), and remember the move."""
    cfg = _cfg(ctx)
    model = model or cfg.serving.model_name
    if version == "latest":
        version = latest_version(cfg, model)
    elif version.isdigit():
        version = int(version)
    else:
        raise click.BadParameter(f"{version!r} is neither a version number nor `latest`", param_hint="VERSION")
    result = set_label(cfg, model, label, version)
    _emit(result, as_json, lambda r: console.print(f"{r['model']}: {r['label']} -> version {r['version']}"))


@models.command("rollback")
@click.option("--label", default="stable", show_default=True)
@click.option("--model", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_rollback(ctx, label, model, as_json) -> None:
    """Point LABEL back at the version it named before the last promote."""
    cfg = _cfg(ctx)
    name = model or cfg.serving.model_name
    history = load_history(cfg)
    moves = history.get(f"{name}/{label}", [])
    if len(moves) < 2:
        raise LivemlError(f"nothing to roll back: {name}/{label} has been promoted {len(moves)} time(s)")
    previous = moves[-2]
    result = set_label(cfg, name, label, previous, record=False)
    history[f"{name}/{label}"] = moves[:-1]
    history_path(cfg).write_text(json.dumps(history, indent=2))
    result["history"] = moves[:-1]
    _emit(result, as_json, lambda r: console.print(f"{r['model']}: {r['label']} rolled back to version {r['version']}"))
