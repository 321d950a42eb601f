"""Model versions and labels on the running model server, driven the way an operator drives TF Serving.

``set_label`` serves a version (a specific-versions policy), waits until it is AVAILABLE, then moves the
label, each step a ``HandleReloadConfigRequest``; the server's model config file under LIVEML_HOME is kept
in step, and every move is remembered (``label_history.json``) so it can be rolled back. Used by
``liveml models promote/rollback``, the demo, and the controller.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from liveml.config import LivemlConfig
from liveml.errors import LivemlError, ServiceError


def run_client(coro):
    """Run a client coroutine; gRPC failures become our errors, each with the next step."""
    import grpc

    from serving.client import ModelNotFound

    try:
        return asyncio.run(coro)
    except ModelNotFound as exc:  # says which model, version or label, and the command that serves one
        raise LivemlError(str(exc)) from None
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise ServiceError(f"the model server is not reachable ({exc.details()}): run `liveml up serving`") from None
        raise LivemlError(f"{exc.code().name}: {exc.details()}") from None


def history_path(cfg: LivemlConfig) -> Path:
    return cfg.home_file("serving", "label_history.json")


def load_history(cfg: LivemlConfig) -> dict[str, list[int]]:
    path = history_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else {}


def model_config(cfg: LivemlConfig):
    from liveml.stack.serving import ensure_model_config
    from serving.model_config import read_model_config

    return read_model_config(ensure_model_config(cfg))


def find_model(config, name: str):
    for m in config.model_config_list.config:
        if m.name == name:
            return m
    raise LivemlError(f"model {name!r} is not in the server's model config (<home>/serving/models.config); "
                      f"models: {[m.name for m in config.model_config_list.config]}. Pass one of them as --model, "
                      f"or set serving.model_name in liveml.yaml")


async def _wait_available(client, model: str, version: int, timeout_s: float = 120.0) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2

    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        try:
            st = (await client.status(model, version=version)).model_version_status[0]
        except grpc.aio.AioRpcError as exc:  # NOT_FOUND until the server has polled the new version
            state = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.5)
            continue
        state = get_model_status_pb2.ModelVersionStatus.State.Name(st.state)
        if state == "AVAILABLE":
            return
        if state == "END" and st.status.error_code:
            raise LivemlError(f"version {version} of {model} failed to load: {st.status.error_message}")
        await asyncio.sleep(0.5)
    raise LivemlError(f"version {version} of {model} did not become AVAILABLE in {timeout_s:.0f} s (last: {state})")


def set_label(cfg: LivemlConfig, model: str, label: str, version: int, record: bool = True) -> dict[str, Any]:
    """Point ``label`` at ``version`` the TF Serving way: serve the version (a specific-versions policy),
    wait until it is AVAILABLE, then move the label, each through HandleReloadConfigRequest."""
    from liveml.stack.serving import model_config_path
    from serving.client import PredictionClient
    from serving.model_config import versions_on_disk

    config = model_config(cfg)
    entry = find_model(config, model)
    on_disk = versions_on_disk(entry.base_path)
    if version not in on_disk:
        raise LivemlError(f"{model} has no version {version} under {entry.base_path}; versions: {on_disk or 'none'}. "
                          + (f"Promote one of them (`liveml models list --model {model}` shows their metrics), "
                             "or push a new one with `liveml train`" if on_disk
                             else "`liveml train` pushes the first one"))
    labels = dict(entry.version_labels)
    keep = sorted(set(labels.values()) | {version} | ({max(on_disk)} if on_disk else set()))
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(keep)

    async def apply():
        async with PredictionClient(cfg.serving.grpc, timeout_s=10.0) as client:
            await _check(await client.reload_config(config))
            await _wait_available(client, model, version)
            entry.version_labels[label] = version
            await _check(await client.reload_config(config))

    run_client(apply())
    from google.protobuf import text_format

    model_config_path(cfg).write_text(text_format.MessageToString(config))
    history = load_history(cfg)
    if record:
        history.setdefault(f"{model}/{label}", []).append(version)
        history_path(cfg).write_text(json.dumps(history, indent=2))
    return {"model": model, "label": label, "version": version, "serving_versions": keep,
            "history": history.get(f"{model}/{label}", [])}


async def _check(resp) -> None:
    if resp.status.error_code:
        import grpc

        code = next(c for c in grpc.StatusCode if c.value[0] == resp.status.error_code)
        raise LivemlError(f"the server refused the config ({code.name}): {resp.status.error_message}")


def latest_version(cfg: LivemlConfig, model: str) -> int:
    """The newest version under the model's base path (the one `liveml train` pushed last)."""
    from serving.model_config import versions_on_disk

    entry = find_model(model_config(cfg), model)
    on_disk = versions_on_disk(entry.base_path)
    if not on_disk:
        raise LivemlError(f"{model} has no version under {entry.base_path} yet: `liveml train` pushes the first one")
    return max(on_disk)
