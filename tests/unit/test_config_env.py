"""Which environment variables address the config, by one rule: LIVEML_<SECTION>__<FIELD> overrides a field
of a declared section (a typo fails, naming the variable), LIVEML_HOME and LIVEML_JARS_DIR override the
top-level fields, and any other LIVEML_* variable is not the config's and never breaks loading (issue 13,
item 9: LIVEML_NO_APT, LIVEML_PROC_MARK and LIVEML_TF_SERVING_ADDRESS each made every command exit 2)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from liveml.config import (TOP_LEVEL_ENV, LivemlConfig, _Section, env_overrides, is_override, load_config,
                           sections)
from liveml.errors import ConfigError
from tests.conftest import LIVEML, OFFLINE_PORTS, REPO, run_cli, write_test_config

pytestmark = pytest.mark.unit

# What the project itself sets or documents beside the config: the stack's mark on every process it starts,
# the setup script's switch, the real-TF-Serving test suite's addresses (README), the config file's path.
PROJECT_VARIABLES = {
    "LIVEML_PROC_MARK": "/some/home/run/flink.pid",
    "LIVEML_NO_APT": "1",
    "LIVEML_TF_SERVING_ADDRESS": "localhost:8500",
    "LIVEML_TF_SERVING_REST": "localhost:8501",
    "LIVEML_TF_SERVING_MODEL_BASE_PATH": "/models",
}


def _cfg_file(tmp_path: Path) -> Path:
    return write_test_config(tmp_path, OFFLINE_PORTS)


def _mentioned() -> set[str]:
    """Every LIVEML_* name the project's code, scripts and docs mention (tests aside, which make up bad ones)."""
    names: set[str] = set()
    files = [REPO / "README.md", REPO / "Makefile", REPO / "tests" / "conftest.py",
             REPO / "tests" / "integration" / "serving" / "conftest.py"]
    for folder in ("liveml", "deploy", "bench", "serving", "flink_jobs", "tfx_pipeline", "iceberg_schemas"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".sh", ".md", ".yaml", ".yml")]
    for path in files:
        if path.is_file():
            names |= set(re.findall(r"LIVEML_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    names.discard("LIVEML_SECTION__FIELD")  # the README's placeholder
    return names


def test_the_project_variables_do_not_change_or_break_the_config(tmp_path):
    path = _cfg_file(tmp_path)
    plain = load_config(path, env={})
    with_them = load_config(path, env={**PROJECT_VARIABLES, "LIVEML_CONFIG": str(path)})
    assert with_them.model_dump() == plain.model_dump()


def test_every_liveml_variable_the_project_mentions_is_an_override_or_ignored(tmp_path):
    names = _mentioned()
    assert set(PROJECT_VARIABLES) <= names, "the list above is what the code and the README use"
    path = _cfg_file(tmp_path)
    plain = load_config(path, env={}).model_dump()
    others = {n: "1" for n in names if not is_override(n)}
    assert load_config(path, env=others).model_dump() == plain
    for name in sorted(n for n in names if is_override(n) and n not in TOP_LEVEL_ENV):
        (section, fields), = env_overrides({name: "x"}).items()
        field, = fields
        assert field in LivemlConfig.model_fields[section].annotation.model_fields, name


def test_top_level_overrides_are_the_declared_list_and_work(tmp_path):
    top = {n for n, f in LivemlConfig.model_fields.items() if n not in sections() and n != "source"}
    assert set(TOP_LEVEL_ENV.values()) == top  # a new top-level field needs a decision here
    assert all(isinstance(LivemlConfig.model_fields[s].annotation(), _Section) for s in sections())
    cfg = load_config(_cfg_file(tmp_path), env={"LIVEML_HOME": str(tmp_path / "elsewhere"),
                                                "LIVEML_JARS_DIR": str(tmp_path / "jars")})
    assert cfg.home_path == tmp_path / "elsewhere" and cfg.jars_path == tmp_path / "jars"
    assert load_config(_cfg_file(tmp_path), env={"LIVEML_SOURCE": "x"}).source == str(_cfg_file(tmp_path))


def test_section_overrides_still_win_over_the_file(tmp_path):
    cfg = load_config(_cfg_file(tmp_path), env={"LIVEML_KAFKA__BOOTSTRAP_SERVERS": "envhost:3",
                                                "LIVEML_ENRICH__CANARY_FRACTION": "0.25", **PROJECT_VARIABLES})
    assert cfg.kafka.bootstrap_servers == "envhost:3" and cfg.enrich.canary_fraction == 0.25


@pytest.mark.parametrize("name, said", [
    ("LIVEML_KAFKA__BOOTSTRAP_SERVER", "'kafka.bootstrap_server' (from environment variable "
                                       "LIVEML_KAFKA__BOOTSTRAP_SERVER): Extra inputs are not permitted"),
    ("LIVEML_KAFAK__BOOTSTRAP_SERVERS", "LIVEML_KAFAK__BOOTSTRAP_SERVERS: a LIVEML_ name with '__' overrides"),
    ("LIVEML_HOME__X", "'home' is not a config section"),
    ("LIVEML_KAFKA__HEAP__MAX", "'heap__max' is not one field name"),
    ("LIVEML_KAFKA__", "'' is not one field name"),
])
def test_an_override_that_names_nothing_fails_naming_the_variable(tmp_path, name, said):
    with pytest.raises(ConfigError) as err:
        load_config(_cfg_file(tmp_path), env={name: "localhost:1", **PROJECT_VARIABLES})
    assert said in str(err.value)


def test_the_cli_with_the_variables_of_issue_13_set(tmp_path):
    """The commands of the issue, as a user types them: `LIVEML_NO_APT=1 liveml config` exited 2."""
    config = _cfg_file(tmp_path)
    for name, value in PROJECT_VARIABLES.items():
        proc = run_cli(config, "config", "--json", env={name: value}, check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        assert json.loads(proc.stdout)["home"] == str(tmp_path)
    typo = run_cli(config, "config", env={"LIVEML_KAFKA__BOOTSTRAP_SERVER": "h:1"}, check=False)
    assert typo.returncode == 2 and "LIVEML_KAFKA__BOOTSTRAP_SERVER" in typo.stderr


def test_a_process_the_stack_starts_loads_the_config_under_the_env_it_is_given(tmp_path, monkeypatch):
    """The environment of a real stack process: flink_env (what the Flink cluster and `flink run` get:
    LIVEML_HOME, LIVEML_CONFIG, FLINK_*), spawn's LIVEML_PROC_MARK, and the project's other variables,
    and in it the real `liveml config` and the config a job loads (liveml.config.load_config())."""
    from liveml.flink import flink_env
    from liveml.stack.process import MARK, PidFile, spawn

    for name in [n for n in os.environ if is_override(n) or n == "LIVEML_CONFIG"]:
        monkeypatch.delenv(name)  # a developer's own overrides are not what this is about
    for name, value in PROJECT_VARIABLES.items():
        if name != MARK:
            monkeypatch.setenv(name, value)
    config = _cfg_file(tmp_path)
    cfg = load_config(config, env={})
    env = flink_env(cfg)
    seen = tmp_path / "child.env"
    probe = ("import json, os, sys; from liveml.config import load_config; cfg = load_config(); "
             f"open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ))); "
             "print(json.dumps({'home': str(cfg.home_path), 'kafka': cfg.kafka.bootstrap_servers}))")
    pidfile = PidFile(tmp_path / "run" / "probe.pid")
    (tmp_path / "run").mkdir()
    kafka = f"localhost:{OFFLINE_PORTS['kafka']}"
    for name, cmd in (("cli", [LIVEML, "config", "--json"]), ("job", [sys.executable, "-c", probe])):
        log = tmp_path / f"{name}.log"
        proc = spawn(cmd, log, pidfile, env=env, cwd=tmp_path)
        assert proc.wait(timeout=120) == 0, log.read_text()
        text = log.read_text()
        out = json.loads(text[text.index("{"):])
        assert out["home"] == str(tmp_path)
        assert (out["kafka"]["bootstrap_servers"] if name == "cli" else out["kafka"]) == kafka
    child = json.loads(seen.read_text())
    assert child[MARK] == pidfile.marker
    assert child["LIVEML_HOME"] == str(tmp_path) and child["LIVEML_CONFIG"] == str(config)
    assert {n: child[n] for n in PROJECT_VARIABLES if n != MARK} == {
        n: v for n, v in PROJECT_VARIABLES.items() if n != MARK}


def test_the_tests_strip_only_what_addresses_the_config(monkeypatch):
    """tests/conftest.py once stripped every LIVEML_* variable from the commands it ran, which hid item 9."""
    from tests.conftest import env_without_config

    monkeypatch.setenv("LIVEML_NO_APT", "1")
    monkeypatch.setenv("LIVEML_PROC_MARK", "/y")
    monkeypatch.setenv("LIVEML_KAFKA__HEAP", "1g")
    monkeypatch.setenv("LIVEML_HOME", "/elsewhere")
    monkeypatch.setenv("LIVEML_CONFIG", "/nowhere.yaml")
    monkeypatch.setenv("FLINK_CONF_DIR", "/x")
    env = env_without_config()
    assert env["LIVEML_NO_APT"] == "1" and env["LIVEML_PROC_MARK"] == "/y" and env["FLINK_CONF_DIR"] == "/x"
    assert not {"LIVEML_KAFKA__HEAP", "LIVEML_HOME", "LIVEML_CONFIG"} & set(env)
    assert "FLINK_CONF_DIR" not in env_without_config("FLINK_")


def test_no_test_strips_every_liveml_variable():
    """A test that drops every LIVEML_* variable from a command's environment cannot see item 9 again;
    tests.conftest.env_without_config drops only what selects or overrides a config."""
    blind = re.compile(r"startswith\(\(?[\"']" + "LIVEML" + r"_[\"']")
    found = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "tests").rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if blind.search(line)]
    assert found == [], found
