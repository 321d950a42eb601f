"""One typed place for the platform's configuration.

The effective config is layered the way pyiceberg layers its own: the YAML file (``liveml.yaml``, or the
path in ``LIVEML_CONFIG``), then ``LIVEML_<SECTION>__<FIELD>`` environment variables (and ``LIVEML_HOME``),
then explicit arguments, which win; any other ``LIVEML_*`` variable is not the config's and is ignored.
``${VAR}`` in the YAML's string values (never in comments or keys) is expanded from the environment once
the file is parsed, so secrets never live in the repository.
Every validation error names the file and the dotted field that is wrong.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Literal, Mapping
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from liveml.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = "liveml.yaml"
CONFIG_FILE_ENV = "LIVEML_CONFIG"  # which file; not an override
ENV_PREFIX = "LIVEML_"
ENV_NESTING = "__"
# The environment addresses the config by one rule (README, "Config"):
# - LIVEML_<SECTION>__<FIELD> (the nesting delimiter in the name) overrides a field of a declared section,
#   and must name one: a typo in the section or the field fails at start-up, naming the variable;
# - a name without the delimiter is never an override, except the top-level fields listed here;
# - every other LIVEML_* variable (LIVEML_CONFIG, LIVEML_PROC_MARK, LIVEML_NO_APT, LIVEML_TF_SERVING_*, ...)
#   belongs to someone else and is ignored, so the project's own variables never break loading.
TOP_LEVEL_ENV = {"LIVEML_HOME": "home", "LIVEML_JARS_DIR": "jars_dir"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _hostport(value: str, field: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{field} must look like HOST:PORT, got {value!r}")
    return value


class KafkaConfig(_Section):
    bootstrap_servers: str = "localhost:9092"
    controller_port: int = 9093
    heap: str = "512m"
    dlq_suffix: str = ".dlq"
    topic_prefix: str = ""  # e.g. "staging-": every topic name the platform uses gets it

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, v: str) -> str:
        for part in v.split(","):
            _hostport(part.strip(), "bootstrap_servers")
        return v

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])


class RedisConfig(_Section):
    url: str = "redis://localhost:6379/0"

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError(f"url must be redis://HOST:PORT/DB, got {v!r}")
        return v

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 6379


class FlinkConfig(_Section):
    rest_url: str = "http://localhost:8081"
    rpc_port: int = 6123
    task_slots: int = Field(4, ge=1)
    parallelism: int = Field(1, ge=1)
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "4096m"
    checkpoint_interval: str = "10s"
    metrics_port_range: str = "9249-9259"

    @field_validator("rest_url")
    @classmethod
    def _check_rest(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("http", "https") or not parsed.port:
            raise ValueError(f"rest_url must be http://HOST:PORT, got {v!r}")
        return v.rstrip("/")

    @property
    def host(self) -> str:
        return urlparse(self.rest_url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlparse(self.rest_url).port or 8081


class ServingConfig(_Section):
    grpc: str = "localhost:8500"
    rest: str = "localhost:8501"
    model_base_path: str = "models"
    model_name: str = "tips"

    @field_validator("grpc", "rest")
    @classmethod
    def _check_addr(cls, v: str, info: Any) -> str:
        return _hostport(v, info.field_name)


class EnrichConfig(_Section):
    """The enrichment job (`liveml submit enrich`): which model it calls and how it waits."""

    label: str = "stable"  # the version label most traffic goes to
    canary_label: str = "canary"
    canary_fraction: float = Field(0.0, ge=0.0, le=1.0)  # share of trips sent to canary_label instead
    shadow_label: str | None = None  # also called on every trip; its score is recorded, never used
    signature: str = "serving_default"
    batch_window_ms: int = Field(20, ge=1)  # end events arriving within this window travel as one batch
    batch_groups: int = Field(8, ge=1)  # ... split into this many batches by trip id (spread over workers)
    capacity: int = Field(50, ge=1)  # batches in flight per operator instance
    # the operator's overall budget per batch, retries included (a worker's first batch also opens the
    # channel and reads the model's signature: 2 s was once too short for it on a loaded 2-core machine)
    timeout_ms: int = Field(5000, ge=1)
    deadline_ms: int = Field(500, ge=1)  # each gRPC call's deadline
    retries: int = Field(3, ge=0)  # unavailable or past-deadline calls retried, with exponential backoff
    backoff_ms: int = Field(50, ge=1)
    ordered: bool = False  # emit in input order (ordered_wait) instead of as answers come

    @model_validator(mode="after")
    def _deadline_fits(self) -> "EnrichConfig":
        if self.deadline_ms > self.timeout_ms:
            raise ValueError(f"deadline_ms ({self.deadline_ms}) must not exceed timeout_ms ({self.timeout_ms})")
        return self


class CatalogConfig(_Section):
    """The Iceberg JDBC catalog shared by pyiceberg and Flink.

    ``backend: sqlite`` keeps a SQLite file under ``home``; ``backend: postgres`` takes ``postgres_url``
    (``postgresql://user:password@host:port/db``), which allows several concurrent committers.
    """

    name: str = "liveml"
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = "catalog/catalog.db"
    postgres_url: str | None = None
    postgres_managed: bool = True  # `liveml up` runs a local PostgreSQL for postgres_url
    warehouse: str = "warehouse"

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> "CatalogConfig":
        if self.backend == "postgres":
            url = urlparse(self.postgres_url or "")
            if url.scheme not in ("postgresql", "postgres") or not url.hostname or not url.path.strip("/"):
                raise ValueError("backend postgres needs postgres_url: postgresql://USER:PASSWORD@HOST:PORT/DB")
        return self


class PrometheusConfig(_Section):
    port: int = 9090
    scrape_interval: str = "5s"
    metrics_base_port: int = 9300


class MonitorConfig(_Section):
    """`liveml monitor` (started by `liveml up monitor`): quality, drift and skew over event-time windows."""
    # SIZE is a tumbling window, SIZE/SLIDE a sliding one (sizes as feature windows spell them: 15m, 1h, 24h)
    windows: list[str] = ["1h", "24h/1h"]
    interval_s: float = Field(30.0, gt=0)  # how often the monitor reads the tables again
    max_label_delay: str | None = None  # overrides the training set's (feedback job and labels_complete)
    metrics_port_offset: int = Field(5, ge=0, le=9)  # serves /metrics on prometheus.metrics_base_port + this

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, v: list[str]) -> list[str]:
        from iceberg_schemas.features import window_seconds

        for w in v:
            size, _, slide = w.partition("/")
            if window_seconds(size) < window_seconds(slide or size) or (slide and window_seconds(size) % window_seconds(slide)):
                raise ValueError(f"window {w!r}: SLIDE must divide SIZE")
        return v

    @field_validator("max_label_delay")
    @classmethod
    def _check_delay(cls, v: str | None) -> str | None:
        if v is not None:
            from iceberg_schemas.features import window_seconds

            window_seconds(v)
        return v


class AlertmanagerConfig(_Section):
    """Alertmanager, started by `liveml up` beside Prometheus; its webhook receiver posts every alert."""
    port: int = 9095  # Alertmanager's own default, 9093, is the Kafka controller's here
    webhook_url: str | None = None  # e.g. the controller's /alerts endpoint; None: alerts are only listed


class LivemlConfig(_Section):
    home: str = ".liveml"
    jars_dir: str = ".liveml/jars"  # installed by `make setup`; relative to the checkout, not to home
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    flink: FlinkConfig = FlinkConfig()
    serving: ServingConfig = ServingConfig()
    enrich: EnrichConfig = EnrichConfig()
    catalog: CatalogConfig = CatalogConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    monitor: MonitorConfig = MonitorConfig()
    alertmanager: AlertmanagerConfig = AlertmanagerConfig()
    source: str | None = Field(None, description="the YAML file this config came from, if any")

    # --- derived paths -------------------------------------------------------------------------------
    # Everything the platform writes lives under ``home`` (LIVEML_HOME), and a fresh home is empty: a path
    # under it is made when it is first needed, by made_dir, reached through home_dir and home_file.
    @property
    def home_path(self) -> Path:
        return _under(REPO_ROOT, self.home)

    def path(self, *parts: str | os.PathLike[str]) -> Path:
        """``home/parts`` (an absolute part stands for itself), named only: for reading and for quoting.
        To write there, name it with :meth:`home_file` or :meth:`home_dir`."""
        return _under(self.home_path, os.fspath(Path(*parts))) if parts else self.home_path

    def home_dir(self, *parts: str | os.PathLike[str]) -> Path:
        """The directory ``home/parts``, made (with its parents) if it is missing."""
        return made_dir(self.path(*parts))

    def home_file(self, *parts: str | os.PathLike[str]) -> Path:
        """The file ``home/parts``, its directory made if it is missing; the file itself is the caller's."""
        path = self.path(*parts)
        made_dir(path.parent)
        return path

    @property
    def warehouse_path(self) -> Path:
        return self.path(self.catalog.warehouse)

    @property
    def sqlite_path(self) -> Path:
        return self.path(self.catalog.sqlite_path)

    @property
    def model_base_path(self) -> Path:
        return self.path(self.serving.model_base_path)

    @property
    def jars_path(self) -> Path:
        return _under(REPO_ROOT, self.jars_dir)

    # --- the catalog, spelled for each side ------------------------------------------------------------
    def catalog_properties(self) -> dict[str, str]:
        """Properties for ``pyiceberg.catalog.load_catalog(name, **properties)``."""
        if self.catalog.backend == "postgres":
            url = urlparse(self.catalog.postgres_url or "")
            uri = url._replace(scheme="postgresql+psycopg2").geturl()
        else:
            uri = f"sqlite:///{self.sqlite_path}"
        return {"type": "sql", "uri": uri, "warehouse": self.warehouse_path.as_uri()}

    def flink_catalog_options(self) -> dict[str, str]:
        """The same catalog as Flink's Iceberg connector sees it (JdbcCatalog through ``catalog-impl``)."""
        opts = {
            "type": "iceberg",
            "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
            "warehouse": self.warehouse_path.as_uri(),
        }
        if self.catalog.backend == "postgres":
            url = urlparse(self.catalog.postgres_url or "")
            opts["uri"] = f"jdbc:postgresql://{url.hostname}:{url.port or 5432}{url.path}"
            if url.username:
                opts["jdbc.user"] = url.username
            if url.password:
                opts["jdbc.password"] = url.password
        else:
            opts["uri"] = f"jdbc:sqlite:{self.sqlite_path}"
        return opts

    def to_public_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["home"] = str(self.home_path)
        data["serving"]["model_base_path"] = str(self.model_base_path)
        data["catalog"]["properties"] = self.catalog_properties()
        data["catalog"]["flink_options"] = self.flink_catalog_options()
        data["catalog"]["warehouse"] = str(self.warehouse_path)
        return data


def made_dir(path: str | os.PathLike[str]) -> Path:
    """The one place a directory the platform writes into is made: with its parents, and no error when it
    exists. Code names paths under the home through LivemlConfig.home_dir and home_file, which call this;
    code handed a path by its caller (a log, a pid file) calls it directly before writing."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _under(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return (p if p.is_absolute() else base / p).resolve()


# --- loading -------------------------------------------------------------------------------------------
def read_yaml(text: str, env: Mapping[str, str], source: str) -> Any:
    """Parse ``text`` as YAML, then expand ``${VAR}`` and ``${VAR:-default}`` inside its string values.

    Expansion comes after parsing and touches values only: a reference in a comment or a key stays as
    written, and an expanded value is one string whatever it holds (``: ``, ``#``, ``{``). While the text is
    parsed, each reference stands as a plain placeholder word, so ``{grpc: ${GRPC}}`` parses as it reads. An
    unset variable without a default is an error naming the file, the line and the field."""
    refs: list[str] = []

    def hold(m: re.Match[str]) -> str:
        refs.append(m.group(0))
        return f"{word}{len(refs) - 1}Z"

    word = f"LIVEMLREF{secrets.token_hex(6)}N"  # letters and digits only: plain in any YAML context
    placeholder = re.compile(word + r"(\d+)Z")

    def restore(value: str) -> str:
        return placeholder.sub(lambda m: refs[int(m.group(1))], value)

    text = _VAR.sub(hold, text)
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            _expand_node(root, (), env, source, restore, set())
            return loader.construct_document(root)
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_problem(exc, text, source, restore)) from None
    finally:
        loader.dispose()


def _expand_node(node: yaml.Node, path: tuple[str, ...], env: Mapping[str, str], source: str,
                 restore: Callable[[str], str], seen: set[int]) -> None:
    if id(node) in seen:  # an alias: the anchored node is expanded once
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        node.value = restore(node.value)
        if node.tag == _STR_TAG and path:  # a string value; never a key (keys are restored, not walked here)
            node.value = _expand_value(node, ".".join(path), env, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _expand_node(item, (*path, str(i)), env, source, restore, seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                key.value = restore(key.value)
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            _expand_node(value, (*path, name), env, source, restore, seen)


def _expand_value(node: yaml.ScalarNode, field: str, env: Mapping[str, str], source: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        line = node.start_mark.line + 1
        if node.style == "|":  # a literal block keeps its lines: count down to the reference
            line += 1 + node.value.count("\n", 0, m.start())
        raise ConfigError(f"{source}:{line}: field '{field}': ${{{name}}} is not set; export {name} or give a "
                          f"default as ${{{name}:-value}}")

    return _VAR.sub(repl, node.value)


def _yaml_problem(exc: yaml.YAMLError, held: str, source: str, restore: Callable[[str], str]) -> str:
    """The parser's complaint, at the line and column of the file as written (not of the placeholders)."""
    mark = getattr(exc, "problem_mark", None)
    where, hint = "", ""
    if mark is not None:
        lines = held.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        where = f":{mark.line + 1}:{len(restore(line[:mark.column])) + 1}"
        if "${" in line:
            hint = " (a reference is ${NAME} or ${NAME:-default}, NAME of letters, digits and _)"
    return f"{source}{where}: not valid YAML: {restore(str(getattr(exc, 'problem', None) or exc))}{hint}"


def sections() -> tuple[str, ...]:
    """The config's sections (``kafka``, ``redis``, ...): what ``LIVEML_<SECTION>__<FIELD>`` may name."""
    return tuple(name for name, f in LivemlConfig.model_fields.items()
                 if isinstance(f.annotation, type) and issubclass(f.annotation, _Section))


def is_override(name: str) -> bool:
    """Whether the environment variable ``name`` addresses the config (see :data:`TOP_LEVEL_ENV`)."""
    return name in TOP_LEVEL_ENV or (name.startswith(ENV_PREFIX) and ENV_NESTING in name[len(ENV_PREFIX):])


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``LIVEML_KAFKA__BOOTSTRAP_SERVERS=h:1`` becomes ``{"kafka": {"bootstrap_servers": "h:1"}}``;
    ``LIVEML_HOME=/x`` becomes ``{"home": "/x"}``; a LIVEML_* name that is not an override is ignored."""
    out: dict[str, Any] = {}
    known = sections()
    for key, value in sorted(env.items()):
        if not is_override(key):
            continue
        if key in TOP_LEVEL_ENV:
            out[TOP_LEVEL_ENV[key]] = value
            continue
        section, *fields = key[len(ENV_PREFIX):].lower().split(ENV_NESTING)
        if section not in known or len(fields) != 1 or not fields[0]:
            what = (f"'{section}' is not a config section" if section not in known
                    else f"'{ENV_NESTING.join(fields)}' is not one field name")
            raise ConfigError(f"environment variable {key}: a LIVEML_ name with '{ENV_NESTING}' overrides a config "
                              f"field, as {ENV_PREFIX}<SECTION>{ENV_NESTING}<FIELD>, and {what} (sections: "
                              f"{', '.join(known)}); unset it, or fix the name")
        out.setdefault(section, {})[fields[0]] = value
    return out


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def find_config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_FILE_ENV):
        return Path(env[CONFIG_FILE_ENV])
    for candidate in (Path.cwd() / DEFAULT_FILE, REPO_ROOT / DEFAULT_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None,
                env: Mapping[str, str] | None = None) -> LivemlConfig:
    """Load the effective config: file, then ``LIVEML_*`` variables, then ``overrides`` (which win)."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    data: dict[str, Any] = {}
    source = "<defaults>"
    if file is not None:
        source = str(file)
        if not file.is_file():
            raise ConfigError(f"{file}: config file not found (set LIVEML_CONFIG or pass --config)")
        loaded = read_yaml(file.read_text(), env, source)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections, got "
                              f"{type(loaded).__name__}")
        data = loaded
    data = deep_merge(data, env_overrides(env))
    if overrides:
        data = deep_merge(data, overrides)
    data["source"] = None if file is None else str(file)
    try:
        return LivemlConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<root>"
            origin = _origin(field, env)
            problems.append(f"{source}: field '{field}'{origin}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from None


def _origin(field: str, env: Mapping[str, str]) -> str:
    var = ENV_PREFIX + field.upper().replace(".", ENV_NESTING)
    if var in env and is_override(var):
        return f" (from environment variable {var})"
    return ""


def config_flag(cfg: LivemlConfig) -> list[str]:
    """``["--config", path]`` when ``cfg`` is not the file `liveml` finds by itself, else ``[]``: what a
    command printed for the user must carry to reach the same stack."""
    default = find_config_file(None, os.environ)
    if cfg.source and (default is None or Path(cfg.source).resolve() != default.resolve()):
        return ["--config", str(cfg.source)]
    return []
