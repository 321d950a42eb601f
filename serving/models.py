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
* Version labels may only point at AVAILABLE versions (FAILED_PRECONDITION otherwise), unless the manager
  is made with ``allow_unavailable_labels`` (TF Serving's ``--allow_version_labels_for_unavailable_models``):
  then a new label, or one that keeps its version, may name a version that is not loaded yet.
* A request's ModelSpec resolves as server_core.cc ``ServableRequestFromModelSpec`` resolves it: an empty
  name is INVALID_ARGUMENT; a label is looked up first (an unknown label, even of an unknown model, is
  INVALID_ARGUMENT) and becomes its version; a model, version or labelled version without an AVAILABLE
  servable is NOT_FOUND ("Servable not found for request: Specific(name, 3)" or "Latest(name)").
* GetModelStatus is get_model_status_impl.cc's: a version gives that version's status, anything else
  (no version, or a version_label, which it ignores) every version the server has seen.

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

from serving.errors import ServingError, fail, scrub
from serving.inference import check_output_filter, prepare_arrays, replay_warmup
from serving.model_config import ModelConfig, configs_from_proto, model_spec, versions_on_disk
from serving.servable import DEFAULT_SIGNATURE, InferenceOptions, Servable

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
    return fail("unknown_label", f"Unrecognized servable version label: {label}")


def not_found(name: str, number: int | None) -> ServingError:
    """basic_manager.cc's NOT_FOUND, naming the request as ``ServableRequest::DebugString`` does."""
    request = f"Specific({name}, {number})" if number is not None else f"Latest({name})"
    return fail("servable_not_found", f"Servable not found for request: {request}")


class ModelManager:
    """Loads, serves and unloads model versions; see the module docstring for the rules.

    Start it with ``await manager.reload_config(config)``, then keep it in step with the disk with
    ``poll()`` or ``poll_forever(interval_s)``. ``close()`` releases its threads.
    """

    def __init__(self, *, warmup: bool = True, inference_threads: int = 4,
                 options: InferenceOptions = InferenceOptions(), saved_model_tags: Sequence[str] = ("serve",),
                 allow_unavailable_labels: bool = False):
        self._warmup = warmup  # --enable_model_warmup
        self._options = options
        self._tags = tuple(saved_model_tags)  # --saved_model_tags
        self._allow_unavailable_labels = allow_unavailable_labels  # --allow_version_labels_for_unavailable_models
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
                            else (grpc.StatusCode.UNKNOWN, scrub(str(exc))))
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
        servable = Servable.load(name, number, path, tags=self._tags, options=self._options)
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
        """server_core.cc ``UpdateModelVersionLabelMap``: all labels or none."""
        labels: dict[str, dict[str, int]] = {}
        for config in self._configs.values():
            current = self._labels.get(config.name, {})
            for label, number in config.labels.items():
                if self._allow_unavailable_labels and current.get(label, number) == number:
                    continue  # a new label, or one that keeps its version, may wait for the version
                version = self._versions.get(config.name, {}).get(number)
                if version is None or version.state != VersionState.AVAILABLE:
                    raise fail("label_not_available",
                               f"Request to assign label to version {number} of model {config.name}, which is not "
                               f"currently available for inference")
            labels[config.name] = dict(config.labels)
        self._labels = labels

    # -- serving ----------------------------------------------------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> ModelVersion:
        """The AVAILABLE version ``spec`` names (its version, its label's version, or the latest); the
        errors are server_core.cc's and basic_manager.cc's (see the module docstring)."""
        if not spec.name:
            raise fail("no_model_name", "ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        number: int | None = None
        if choice == "version_label":
            number = self._labels.get(spec.name, {}).get(spec.version_label)
            if number is None:
                raise unknown_label(spec.version_label)
        elif choice == "version":
            number = spec.version.value
        versions = self._versions.get(spec.name, {}) if spec.name in self._configs else {}
        if number is None:
            available = [n for n, v in versions.items() if v.state == VersionState.AVAILABLE]
            if not available:
                raise not_found(spec.name, None)
            number = max(available)
        version = versions.get(number)
        if version is None or version.state != VersionState.AVAILABLE:
            raise not_found(spec.name, number)
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
        """Run a signature on numpy inputs, checked as Predict checks its inputs: the outputs and the version
        that computed them."""
        spec = model_spec(model_name, version, label, signature_name)

        def handler(servable: Servable) -> tuple[dict[str, np.ndarray], int]:
            name, arrays = prepare_arrays(servable, signature_name, dict(inputs))
            outputs = check_output_filter(output_filter, servable.signature_defs[name])
            return servable.run(name, arrays, outputs), servable.version
        return await self.call(spec, handler)

    def model_status(self, spec: model_pb2.ModelSpec) -> list[get_model_status_pb2.ModelVersionStatus]:
        """GetModelStatus (get_model_status_impl.cc): the version ``spec`` names, or, without a version
        (a ``version_label`` is ignored, as TF Serving ignores it), every version the server has seen,
        newest first. NOT_FOUND when there is none."""
        versions = self._versions.get(spec.name, {})
        if spec.WhichOneof("version_choice") == "version":
            number = spec.version.value
            if number not in versions:
                raise fail("status_version_not_found", f"Could not find version {number} of model {spec.name}")
            return [versions[number].status_proto()]
        if not versions:
            raise fail("status_model_not_found", f"Could not find any versions of model {spec.name}")
        return [versions[n].status_proto() for n in sorted(versions, reverse=True)]

    def labels(self, model_name: str) -> dict[str, int]:
        return dict(self._labels.get(model_name, {}))
