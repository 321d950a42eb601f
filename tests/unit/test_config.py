"""Config layering and the errors that name the file and the field."""

from pathlib import Path

import pytest

from liveml.config import env_overrides, load_config
from liveml.errors import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "liveml.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_interface_contract(tmp_path):
    cfg = load_config(write(tmp_path, ""), env={})
    data = cfg.to_public_dict()
    assert data["kafka"]["bootstrap_servers"] == "localhost:9092"
    assert data["redis"]["url"] == "redis://localhost:6379/0"
    assert data["flink"]["rest_url"] == "http://localhost:8081"
    assert (data["serving"]["grpc"], data["serving"]["rest"]) == ("localhost:8500", "localhost:8501")
    assert data["catalog"]["name"] == "liveml"
    assert data["catalog"]["properties"]["type"] == "sql"
    assert Path(data["home"]).is_absolute()


def test_file_then_env_then_explicit(tmp_path):
    path = write(tmp_path, "kafka:\n  bootstrap_servers: filehost:1\nredis:\n  url: redis://filehost:2/0\n")
    env = {"LIVEML_KAFKA__BOOTSTRAP_SERVERS": "envhost:3", "LIVEML_REDIS__URL": "redis://envhost:4/0"}
    cfg = load_config(path, overrides={"redis": {"url": "redis://arghost:5/0"}}, env=env)
    assert cfg.kafka.bootstrap_servers == "envhost:3"  # env beats file
    assert cfg.redis.url == "redis://arghost:5/0"  # explicit beats env


def test_var_expansion_with_default_and_from_env(tmp_path):
    path = write(tmp_path, "catalog:\n  backend: postgres\n  postgres_url: postgresql://u:${PGPASS}@db:5433/"
                           "${PGDB:-iceberg}\n")
    cfg = load_config(path, env={"PGPASS": "s3cret"})
    assert cfg.catalog.postgres_url == "postgresql://u:s3cret@db:5433/iceberg"
    assert cfg.catalog_properties()["uri"] == "postgresql+psycopg2://u:s3cret@db:5433/iceberg"
    assert cfg.flink_catalog_options()["uri"] == "jdbc:postgresql://db:5433/iceberg"
    assert cfg.flink_catalog_options()["jdbc.password"] == "s3cret"


def test_unset_variable_names_file_line_field_and_variable(tmp_path):
    path = write(tmp_path, "kafka:\n  bootstrap_servers: ${KAFKA_ADDR}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert f"{path}:2: field 'kafka.bootstrap_servers': ${{KAFKA_ADDR}} is not set" in str(err.value)


def readme_sample() -> str:
    """The sample liveml.yaml of the README's Config section, verbatim."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Config\n"):]
    section = section[:section.index("\n## ", 1)]
    return section[section.index("```yaml\n") + len("```yaml\n"):section.index("\n```", section.index("```yaml"))] + "\n"


def test_the_readmes_sample_config_loads_as_written(tmp_path):
    """Issue 13, item 8: its ${PGPASSWORD} sits in a comment, and expansion ran before parsing (exit 2)."""
    sample = readme_sample()
    assert "# postgres_url: postgresql://iceberg:${PGPASSWORD}@" in sample  # the case of the issue
    cfg = load_config(write(tmp_path, sample), env={})
    assert cfg.home_path == REPO / ".liveml"
    assert (cfg.kafka.bootstrap_servers, cfg.kafka.controller_port) == ("localhost:9092", 9093)
    assert cfg.redis.url == "redis://localhost:6379/0"
    assert (cfg.flink.rest_url, cfg.flink.rpc_port, cfg.flink.task_slots, cfg.flink.checkpoint_interval) == (
        "http://localhost:8081", 6123, 4, "10s")
    assert (cfg.serving.grpc, cfg.serving.rest, cfg.serving.model_base_path) == (
        "localhost:8500", "localhost:8501", "models")
    assert (cfg.catalog.name, cfg.catalog.backend, cfg.catalog.postgres_url) == ("liveml", "sqlite", None)
    assert (cfg.prometheus.port, cfg.prometheus.metrics_base_port) == (9090, 9300)


def test_the_readmes_sample_with_postgres_switched_on(tmp_path):
    sample = readme_sample().replace("backend: sqlite", "backend: postgres").replace("# postgres_url", "postgres_url")
    path = write(tmp_path, sample)
    cfg = load_config(path, env={"PGPASSWORD": "s3cret"})
    assert cfg.catalog.postgres_url == "postgresql://iceberg:s3cret@localhost:5432/iceberg"
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    line = sample.splitlines().index(next(x for x in sample.splitlines() if "${PGPASSWORD}" in x)) + 1
    assert f"{path}:{line}: field 'catalog.postgres_url': ${{PGPASSWORD}} is not set" in str(err.value)


@pytest.mark.parametrize("text", [
    "# kafka: {bootstrap_servers: ${NOT_SET}}\n",
    "kafka: {bootstrap_servers: localhost:1}  # or ${NOT_SET}\n",
    "kafka:\n  # heap: ${NOT_SET}\n  heap: 1g\n",
    "kafka:\n  heap: 1g # ${NOT_SET:-x} ${NOT_SET}\n",
])
def test_comments_are_never_expanded(tmp_path, text):
    load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize("value", ["p: w#rd", "a # b", "{x: 1}", "[1, 2]", "- item", "'q'\"", "&anchor *alias",
                                   "${OTHER}", "", " padded "])
def test_an_expanded_value_is_one_string_whatever_it_holds(tmp_path, value):
    text = ("kafka:\n  topic_prefix: ${V}\n  dlq_suffix: '${V}'\nenrich: {shadow_label: ${V}, label: \"${V}\"}\n"
            "catalog:\n  name: |\n    ${V}\n")
    cfg = load_config(write(tmp_path, text), env={"V": value, "OTHER": "not expanded twice"})
    assert cfg.kafka.topic_prefix == value and cfg.kafka.dlq_suffix == value
    assert cfg.enrich.shadow_label == value and cfg.enrich.label == value
    assert cfg.catalog.name == value + "\n"


def test_references_in_flow_collections_and_typed_fields(tmp_path):
    """What the README's flow style invites; the field's type reads the expanded string."""
    text = ("serving: {grpc: ${GRPC}, rest: ${REST:-localhost:9501}}\nflink: {task_slots: ${SLOTS:-2}}\n"
            "enrich: {ordered: ${ORDERED}, canary_fraction: ${FRACTION}}\n")
    cfg = load_config(write(tmp_path, text), env={"GRPC": "h:1", "ORDERED": "true", "FRACTION": "0.5"})
    assert (cfg.serving.grpc, cfg.serving.rest, cfg.flink.task_slots) == ("h:1", "localhost:9501", 2)
    assert cfg.enrich.ordered is True and cfg.enrich.canary_fraction == 0.5


def test_keys_are_never_expanded(tmp_path):
    path = write(tmp_path, "kafka:\n  ${FIELD}: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"FIELD": "heap"})
    assert "field 'kafka.${FIELD}'" in str(err.value) and "Extra inputs" in str(err.value)


def test_a_bad_reference_in_a_flow_collection_names_the_line_and_column_as_written(tmp_path):
    path = write(tmp_path, "kafka: {heap: ${HEAP}, topic_prefix: ${1BAD}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"HEAP": "1g"})
    assert f"{path}:1:39: not valid YAML" in str(err.value) and "${NAME:-default}" in str(err.value)


@pytest.mark.parametrize("text, field", [
    ("kafka:\n  bootstrap_servers: no-port-here\n", "kafka.bootstrap_servers"),
    ("flink:\n  task_slots: zero\n", "flink.task_slots"),
    ("flink:\n  task_slots: 0\n", "flink.task_slots"),
    ("redis:\n  url: http://x:1\n", "redis.url"),
    ("catalog:\n  backend: oracle\n", "catalog.backend"),
    ("kafka:\n  bootstrap_server: localhost:9092\n", "kafka.bootstrap_server"),
    ("catalog:\n  backend: postgres\n", "catalog"),
])
def test_bad_field_names_file_and_field(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(path) in str(err.value)
    assert f"'{field}'" in str(err.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "kafka:\n  bootstrap_servers: [localhost:9092\nredis: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(path) in str(err.value) and "not valid YAML" in str(err.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_env_override_error_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, ""), env={"LIVEML_FLINK__TASK_SLOTS": "many"})
    assert "LIVEML_FLINK__TASK_SLOTS" in str(err.value)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_env_overrides_are_section_double_underscore_field_and_the_top_level_list():
    assert env_overrides({"LIVEML_KAFKA__HEAP": "1g", "LIVEML_HOME": "/x", "OTHER": "2", "LIVEML_CONFIG": "f",
                          "LIVEML_PROC_MARK": "/p", "LIVEML_NO_APT": "1"}) == {"kafka": {"heap": "1g"}, "home": "/x"}


def test_catalog_properties_open_with_plain_pyiceberg(tmp_path):
    from pyiceberg.catalog import load_catalog

    cfg = load_config(write(tmp_path, f"home: {tmp_path}\n"), env={})
    cfg.sqlite_path.parent.mkdir(parents=True)
    catalog = load_catalog(cfg.catalog.name, **cfg.catalog_properties())
    catalog.create_namespace("smoke")
    assert ("smoke",) in catalog.list_namespaces()
    assert cfg.flink_catalog_options()["uri"] == f"jdbc:sqlite:{cfg.sqlite_path}"


def test_a_tenant_is_the_base_config_with_its_own_topics_redis_db_and_catalog(tmp_path):
    from liveml.tenant import write_tenant_config

    base = load_config(write(tmp_path, f"home: {tmp_path}\nflink:\n  rest_url: http://localhost:18081\n"), env={})
    cfg = load_config(write_tenant_config(base, "staging", 4), env={})
    assert cfg.kafka.topic("trips") == "staging-trips"
    assert cfg.redis.url == "redis://localhost:6379/4"
    assert cfg.sqlite_path == tmp_path / "tenants" / "staging" / "catalog.db"
    assert cfg.warehouse_path != base.warehouse_path
    assert cfg.flink.rest_url == base.flink.rest_url and cfg.jars_path == base.jars_path
