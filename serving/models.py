"""The model registry: which versions of which models are loaded, kept in step with the file system.

It follows TF Serving's model lifecycle, so clients and operators see the same behaviour:

* Config is TF Serving's: a ``model_config_list`` text proto (:func:`parse_model_config`) or one model
  from ``--model_name``/``--model_base_path`` (:func:`single_model_config`). Each model's versions are
  the integer-named directories under its base path; its version policy (latest N, default 1; specific;
  all) picks the *aspired* ones.
* :meth:`ModelManager.poll` loads aspired versions, newest first, in a thread (a load must never stall
  the event loop), replays ``assets.extra/tf_serving_warmup_requests`` before the version turns
  AVAILABLE, and unloads versions no longer aspired. As TF Serving's availability-preserving policy
  does, an unaspired version is kept while no aspired version is available, so a bad push never leaves
  a model with nothing to serve.
* Unloading is two-step: UNLOADING at once (no new request gets the version), END once the requests
  already running on it have finished (a per-version in-flight count).
* A version that fails to load goes to END with its error in the status and never takes traffic; it is
  not retried until it disappears from the aspired set (e.g. its directory is replaced by a new version).
* Version labels may only point at AVAILABLE versions (FAILED_PRECONDITION otherwise, as TF Serving's
  default ``allow_version_labels_for_unavailable_models=false``). An unknown model or version is
  NOT_FOUND, an unknown label INVALID_ARGUMENT: TF Serving's codes and messages, which clients match on.

All state lives on one asyncio event loop; only loading and inference run in threads.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import grpc
import numpy as np
from prometheus_client import Counter, Gauge
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.inference import replay_warmup
from serving.model_config import ModelConfig, configs_from_proto, model_spec, versions_on_disk
from serving.servable import DEFAULT_SIGNATURE, Servable

log = logging.getLogger(__name__)
T = TypeVar("T")

# TensorFlow's own name for SavedModel loads (":tensorflow:cc:saved_model:load_attempt_count"), and the
# versions each model has AVAILABLE (TF Serving has no single metric for it; one gauge per model).
LOAD_ATTEMPTS = Counter("tensorflow_cc_saved_model_load_attempt_count", "SavedModel loads, by model and outcome",
                        ["model_name", "status"])
LOADED_VERSIONS = Gauge("tensorflow_serving_loaded_versions", "Versions AVAILABLE for inference", ["model_name"])

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class VersionState(enum.IntEnum):
    """``ModelVersionStatus.State``, with the same numbers."""
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(eq=False)
class ModelVersion:
    """One version of a model, from its first sight on disk to its unload."""
    model: str
    version: int
    path: Path
    state: VersionState = VersionState.START
    error: ServingError | None = None
    servable: Servable | None = None
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set when in_flight hits 0

    def status_proto(self) -> get_model_status_pb2.ModelVersionStatus:
        status = get_model_status_pb2.ModelVersionStatus(version=self.version, state=int(self.state))
        if self.error is not None:
            status.status.error_code = self.error.code_number
            status.status.error_message = self.error.message
        return status


def unknown_label(label: str) -> ServingError:
    """TF Serving answers an unknown label with INVALID_ARGUMENT (an unknown version is NOT_FOUND)."""
    return invalid_argument(f"Unrecognized servable version label: {label}")


def _spec_text(spec: model_pb2.ModelSpec) -> str:
    """How TF Serving names a request in its NOT_FOUND messages."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return f"Specific({spec.name}, {spec.version.value})"
    if choice == "version_label":
        return f"Specific({spec.name}, label {spec.version_label})"
    return f"Latest({spec.name})"


class ModelManager:
    """Loads, serves and unloads model versions; see the module docstring for the rules.

    Start it with ``await manager.reload_config(config)``, then keep it in step with the disk with
    ``poll()`` or ``poll_forever(interval_s)``. ``close()`` releases its threads.
    """

    def __init__(self, *, warmup: bool = True, inference_threads: int = 4):
        self._warmup = warmup
        self._configs: dict[str, ModelConfig] = {}
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._lock = asyncio.Lock()  # one poll or reload at a time
        self._unloads: set[asyncio.Task] = set()
        self._load_threads = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._inference_threads = ThreadPoolExecutor(inference_threads, thread_name_prefix="inference")

    @property
    def configs(self) -> dict[str, ModelConfig]:
        return dict(self._configs)

    def serves(self, model_name: str) -> bool:
        """Whether ``model_name`` is in the current config."""
        return model_name in self._configs

    # -- configuration and the file system --------------------------------------------------------------

    async def reload_config(self, config: model_server_config_pb2.ModelServerConfig | Iterable[ModelConfig]) -> None:
        """Serve exactly the models in ``config``: load new ones, unload removed ones, then move labels.

        Labels are applied after the loads, all or none: a label naming a version that is not AVAILABLE
        fails the reload with FAILED_PRECONDITION and leaves every label as it was (the models
        themselves are already updated, as in TF Serving).
        """
        if isinstance(config, model_server_config_pb2.ModelServerConfig):
            configs = configs_from_proto(config)
        else:
            configs = list(config)
        async with self._lock:
            self._configs = {c.name: c for c in configs}
            await self._sync_all()
            self._apply_labels()

    async def poll(self) -> None:
        """One pass over every model's base path: load what is newly aspired, unload what no longer is."""
        async with self._lock:
            await self._sync_all()

    async def poll_forever(self, interval_s: float = 1.0) -> None:
        """``poll()`` every ``interval_s`` (TF Serving's ``--file_system_poll_wait_seconds``), until cancelled."""
        while True:
            try:
                await self.poll()
            except Exception:  # a bad poll (e.g. an unreadable base path) must not end polling
                log.exception("model poll failed")
            await asyncio.sleep(interval_s)

    async def wait_unloaded(self) -> None:
        """Wait for every pending unload, i.e. until the versions being unloaded have drained."""
        while self._unloads:
            await asyncio.gather(*self._unloads, return_exceptions=True)

    async def close(self) -> None:
        self._load_threads.shutdown(wait=False, cancel_futures=True)
        self._inference_threads.shutdown(wait=False, cancel_futures=True)

    async def _sync_all(self) -> None:
        for name in list(self._versions):
            if name not in self._configs:
                for version in self._versions[name].values():
                    self._start_unload(version)
                self._labels.pop(name, None)
        for config in self._configs.values():
            await self._sync_model(config)

    async def _sync_model(self, config: ModelConfig) -> None:
        loop = asyncio.get_running_loop()
        on_disk = await loop.run_in_executor(self._load_threads, versions_on_disk, config.base_path)
        aspired = config.policy.select(on_disk)
        versions = self._versions.setdefault(config.name, {})
        for number, version in list(versions.items()):  # failed versions are forgotten once unaspired
            if version.error is not None and number not in aspired:
                del versions[number]
        for number in sorted(aspired, reverse=True):  # newest first, as TF Serving loads
            current = versions.get(number)
            if current is None or (current.state == VersionState.END and current.error is None):
                versions[number] = await self._load(config.name, number, Path(config.base_path) / str(number))
        serving_unaspired = sorted(n for n, v in versions.items()
                                   if v.state == VersionState.AVAILABLE and n not in aspired)
        if not any(versions[n].state == VersionState.AVAILABLE for n in aspired if n in versions):
            serving_unaspired = serving_unaspired[:-1]  # keep the newest one serving
        for number in serving_unaspired:
            self._start_unload(versions[number])

    async def _load(self, name: str, number: int, path: Path) -> ModelVersion:
        version = ModelVersion(name, number, path, VersionState.LOADING)
        self._versions[name][number] = version  # LOADING is visible in GetModelStatus meanwhile
        try:
            version.servable = await asyncio.get_running_loop().run_in_executor(
                self._load_threads, self._load_servable, name, number, path)
        except Exception as exc:
            code, detail = ((exc.code, exc.message) if isinstance(exc, ServingError)  # e.g. a bad warmup
                            else (grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"))
            version.state = VersionState.END
            version.error = ServingError(code, f"Failed to load servable {name} version {number} from {path}: "
                                               f"{detail}")
            log.error("%s", version.error.message)
            LOAD_ATTEMPTS.labels(name, "error").inc()
            return version
        version.state = VersionState.AVAILABLE
        LOAD_ATTEMPTS.labels(name, "success").inc()
        self._count_available(name)
        log.info("model %s version %d is available", name, number)
        return version

    def _count_available(self, name: str) -> None:
        LOADED_VERSIONS.labels(name).set(sum(v.state == VersionState.AVAILABLE
                                             for v in self._versions.get(name, {}).values()))

    def _load_servable(self, name: str, number: int, path: Path) -> Servable:
        servable = Servable.load(name, number, path)
        warmup = path / WARMUP_FILE
        if self._warmup and warmup.is_file():
            count = replay_warmup(servable, str(warmup))
            log.info("model %s version %d: replayed %d warmup requests", name, number, count)
        return servable

    def _start_unload(self, version: ModelVersion) -> None:
        if version.state != VersionState.AVAILABLE:
            return
        version.state = VersionState.UNLOADING
        self._count_available(version.model)
        task = asyncio.get_running_loop().create_task(self._unload(version))
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    async def _unload(self, version: ModelVersion) -> None:
        if version.in_flight:
            await version.drained.wait()
        version.servable = None  # the last reference: TF frees the model
        version.state = VersionState.END
        log.info("model %s version %d is unloaded", version.model, version.version)

    def _apply_labels(self) -> None:
        labels: dict[str, dict[str, int]] = {}
        for config in self._configs.values():
            for label, number in config.labels.items():
                version = self._versions.get(config.name, {}).get(number)
                if version is None or version.state != VersionState.AVAILABLE:
                    raise failed_precondition(
                        f"Request to assign label to version {number} of model {config.name}, which is not "
                        f"currently available for inference")
            labels[config.name] = dict(config.labels)
        self._labels = labels

    # -- serving ----------------------------------------------------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> ModelVersion:
        """The AVAILABLE version ``spec`` names (its version, its label, or the latest).

        NOT_FOUND for an unknown model or a version that is not AVAILABLE; INVALID_ARGUMENT for an unknown
        label (both as TF Serving answers).
        """
        versions = self._versions.get(spec.name) if spec.name in self._configs else None
        if not versions:
            raise not_found(f"Servable not found for request: {_spec_text(spec)}")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            number = spec.version.value
        elif choice == "version_label":
            if spec.version_label not in self._labels.get(spec.name, {}):
                raise unknown_label(spec.version_label)
            number = self._labels[spec.name][spec.version_label]
        else:
            available = [n for n, v in versions.items() if v.state == VersionState.AVAILABLE]
            if not available:
                raise not_found(f"Servable not found for request: {_spec_text(spec)}")
            number = max(available)
        version = versions.get(number)
        if version is None or version.state != VersionState.AVAILABLE:
            raise not_found(f"Servable not found for request: {_spec_text(spec)}")
        return version

    def checkout(self, spec: model_pb2.ModelSpec) -> ModelVersion:
        """Resolve ``spec`` and count one request in flight on it; pair with :meth:`release`."""
        version = self.resolve(spec)
        version.in_flight += 1
        version.drained.clear()
        return version

    def release(self, version: ModelVersion) -> None:
        version.in_flight -= 1
        if version.in_flight == 0:
            version.drained.set()

    async def call(self, spec: model_pb2.ModelSpec, handler: Callable[[Servable], T], *,
                   delay_s: float = 0.0) -> T:
        """``handler(servable)`` in an inference thread, on the version ``spec`` resolves to.

        The version counts the request as in flight until the handler returns, even if the caller gives
        up first (a cancelled call cannot stop a running TF op), so an unload never pulls the model from
        under it. ``delay_s`` holds the version for that long first: an artificial delay for fault tests.
        """
        loop = asyncio.get_running_loop()
        version = self.checkout(spec)
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            future = self._inference_threads.submit(handler, version.servable)
        except BaseException:
            self.release(version)
            raise
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self.release, version))
        return await asyncio.wrap_future(future)

    async def run(self, model_name: str, inputs: Mapping[str, np.ndarray], *, version: int | None = None,
                  label: str | None = None, signature_name: str = DEFAULT_SIGNATURE,
                  output_filter: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], int]:
        """Run a signature on numpy inputs: the outputs and the version that computed them (for REST)."""
        spec = model_spec(model_name, version, label, signature_name)
        return await self.call(spec, lambda s: (s.run(signature_name, inputs, output_filter), s.version))

    def model_status(self, spec: model_pb2.ModelSpec) -> list[get_model_status_pb2.ModelVersionStatus]:
        """GetModelStatus: every known version of the model, or the one ``spec`` names; NOT_FOUND if none."""
        versions = self._versions.get(spec.name, {})
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            number = self._labels.get(spec.name, {}).get(spec.version_label)
            if number is None:
                raise unknown_label(spec.version_label)
            choice, spec = "version", model_pb2.ModelSpec(name=spec.name)
            spec.version.value = number
        if choice == "version":
            if spec.version.value not in versions:
                raise not_found(f"Could not find version {spec.version.value} of model {spec.name}")
            return [versions[spec.version.value].status_proto()]
        if not versions:
            raise not_found(f"Could not find any versions of model {spec.name}")
        return [versions[n].status_proto() for n in sorted(versions, reverse=True)]

    def labels(self, model_name: str) -> dict[str, int]:
        return dict(self._labels.get(model_name, {}))
