"""TF Serving's model config, as data: version policies, models, the ``model_config_list`` text proto.

Split from :mod:`serving.models`, which keeps the loaded versions in step with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from serving.errors import fail

ServableVersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy

@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk to serve: the ``latest`` N, ``specific`` ones, or ``all``."""
    kind: str = "latest"  # latest | specific | all
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("latest", "specific", "all"):
            raise ValueError(f"unknown version policy {self.kind!r}; expected latest, specific or all")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"a latest policy serves at least 1 version, not {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("a specific version policy needs at least one version")

    def select(self, on_disk: Iterable[int]) -> set[int]:
        versions = sorted(set(on_disk))
        if self.kind == "latest":
            return set(versions[-self.num_versions:])
        if self.kind == "specific":
            return set(versions) & set(self.versions)
        return set(versions)

    def to_proto(self) -> ServableVersionPolicy:
        policy = ServableVersionPolicy()
        if self.kind == "latest":
            policy.latest.num_versions = self.num_versions
        elif self.kind == "specific":
            policy.specific.versions.extend(self.versions)
        else:
            policy.all.SetInParent()
        return policy

    @classmethod
    def from_proto(cls, policy: ServableVersionPolicy) -> "VersionPolicy":
        kind = policy.WhichOneof("policy_choice")
        if kind == "specific":
            return cls("specific", versions=tuple(policy.specific.versions))
        if kind == "all":
            return cls("all")
        # Unset, or latest with num_versions unset (0): TF Serving serves the latest 1.
        return cls("latest", num_versions=policy.latest.num_versions or 1)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)

    def to_proto(self) -> model_server_config_pb2.ModelConfig:
        proto = model_server_config_pb2.ModelConfig(name=self.name, base_path=self.base_path,
                                                    model_platform="tensorflow")
        proto.model_version_policy.CopyFrom(self.policy.to_proto())
        for label, version in self.labels.items():
            proto.version_labels[label] = version
        return proto

    @classmethod
    def from_proto(cls, proto: model_server_config_pb2.ModelConfig) -> "ModelConfig":
        if not proto.name or not proto.base_path:
            raise fail("reload_config_invalid", f"a model config needs a name and a base_path: {proto}")
        if proto.model_platform not in ("", "tensorflow"):
            raise fail("reload_config_invalid", f"model {proto.name}: platform {proto.model_platform!r} is not "
                                                f"served; only tensorflow")
        try:
            policy = VersionPolicy.from_proto(proto.model_version_policy)
        except ValueError as exc:
            raise fail("reload_config_invalid", f"model {proto.name}: {exc}") from exc
        return cls(proto.name, proto.base_path, policy, dict(proto.version_labels))


def parse_model_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    """A ``--model_config_file``'s text proto; INVALID_ARGUMENT naming the parse error."""
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise fail("config_invalid", f"model config is not a valid ModelServerConfig text proto: {exc}") from exc


def read_model_config(path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    return parse_model_config(Path(path).read_text())


def configs_from_proto(config: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """Our configs from TF Serving's; only ``model_config_list`` is supported, as TF Serving's reload."""
    if config.WhichOneof("config") == "custom_model_config":  # model_service_impl.cc's message
        raise fail("reload_config_type", "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                         "ModelConfigList is currently supported")
    names: set[str] = set()
    for proto in config.model_config_list.config:  # server_core.cc ValidateModelConfigList
        if proto.name in names:
            raise fail("reload_config_invalid", f"Illegal to list model {proto.name} multiple times in config list")
        names.add(proto.name)
    return [ModelConfig.from_proto(proto) for proto in config.model_config_list.config]


def configs_to_proto(configs: Iterable[ModelConfig]) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.extend(c.to_proto() for c in configs)
    return config


def single_model_config(model_name: str, model_base_path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    """The config ``tensorflow_model_server --model_name=.. --model_base_path=..`` builds."""
    return configs_to_proto([ModelConfig(model_name, str(model_base_path))])


def versions_on_disk(base_path: str | Path) -> list[int]:
    """The integer-named directories holding a ``saved_model.pb`` (others are ignored, as TF Serving does)."""
    base = Path(base_path)
    if not base.is_dir():
        return []
    return sorted(int(d.name) for d in base.iterdir()
                  if d.name.isdigit() and (d / "saved_model.pb").is_file())


def model_spec(model_name: str, version: int | None = None, label: str | None = None,
               signature_name: str = "") -> model_pb2.ModelSpec:
    """The ``ModelSpec`` a request names: a version, a label, or neither (the latest)."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec
