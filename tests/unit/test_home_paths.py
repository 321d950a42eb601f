"""Everything the platform writes lives under LIVEML_HOME, and a fresh home is empty: each path under it is
made when it is first needed, by one helper (liveml.config.made_dir, through LivemlConfig.home_dir and
home_file). Issue 13, item 7: bench/feature_pipeline.py ran 15 minutes on a new home, printed its figures,
then crashed writing them (FileNotFoundError: .../bench/feature_pipeline.json)."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from liveml.config import REPO_ROOT, load_config
from tests.conftest import OFFLINE_PORTS, write_test_config

pytestmark = pytest.mark.unit

BENCHES = sorted((REPO_ROOT / "bench").glob("*.py"))
# Code that knows the config (so can name paths under the home): the package and the benchmarks.
LINTED = sorted([*(REPO_ROOT / "liveml").rglob("*.py"), *BENCHES])
HELPER = REPO_ROOT / "liveml" / "config.py"


@pytest.fixture
def fresh(tmp_path):
    """A config whose home does not exist yet, nor its parent."""
    config = write_test_config(tmp_path / "conf", OFFLINE_PORTS)
    cfg = load_config(config, env={}, overrides={"home": str(tmp_path / "new" / "home")})
    assert not cfg.home_path.parent.exists()
    return cfg


def _figures_name(path: Path) -> str | None:
    m = re.search(r"Writes flat JSON to LIVEML_HOME/bench/(\w+)\.json", path.read_text())
    return m.group(1) if m else None


def _str_constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


@pytest.mark.parametrize("bench", [b for b in BENCHES if _figures_name(b)], ids=lambda p: p.stem)
def test_every_benchmark_writes_its_figures_into_a_fresh_home(bench, fresh, capsys):
    """Each benchmark names its file before it measures and writes through the helper at the end; run
    that writing path (the run itself takes many minutes) on a home that does not exist yet."""
    from liveml.figures import write_figures

    name = _figures_name(bench)
    tree = ast.parse(bench.read_text())
    consts = _str_constants(tree)

    def named(call: ast.Call) -> str | None:
        arg = call.args[1] if len(call.args) > 1 else None
        return arg.value if isinstance(arg, ast.Constant) else consts.get(getattr(arg, "id", ""))

    assert [named(c) for c in _calls(tree, "write_figures")] == [name], f"{bench.name} writes {name}.json once"
    first = min(c.lineno for c in _calls(tree, "figures_file") if named(c) == name)
    assert first < _calls(tree, "write_figures")[0].lineno, "named (and its folder made) before measuring"

    figures = {"events_per_s": np.float64(1234.5), "samples": np.int64(7), "ok": True, "note": "x"}
    out = write_figures(fresh, name, figures)
    assert out == fresh.home_path / "bench" / f"{name}.json"
    assert json.loads(out.read_text()) == {"events_per_s": 1234.5, "samples": 7, "ok": True, "note": "x"}
    printed = capsys.readouterr().out
    assert json.loads(printed[:printed.index("\nwritten to")]) == json.loads(out.read_text())


def test_each_writer_of_the_stack_works_on_a_fresh_home(fresh):
    """The stack's own files, each written by the code `liveml up` runs, on a home nothing made yet."""
    from liveml.flink import flink_env
    from liveml.stack import process
    from liveml.stack.flink_cluster import FlinkService
    from liveml.stack.kafka import KafkaService
    from liveml.stack.prometheus import PrometheusService
    from liveml.stack.redis_server import RedisService
    from liveml.stack.serving import ServingService, ensure_model_config

    home = fresh.home_path
    svc = RedisService(fresh)  # any service: its log and pid file, which `liveml status` only names
    assert svc.status()["log"] == str(home / "logs" / "redis.log") and not home.exists()
    proc = process.spawn([sys.executable, "-c", "print('started')"], svc.log, svc.pidfile)
    proc.wait(timeout=30)
    assert svc.log.read_text().strip() == "started" and svc.pidfile.read()
    assert FlinkService(fresh).write_conf() == home / "flink" / "conf"
    assert (home / "flink" / "conf" / "config.yaml").is_file()
    assert all((home / "flink" / sub).is_dir() for sub in ("checkpoints", "savepoints", "tmp", "pid"))
    env = flink_env(fresh)
    assert Path(env["FLINK_LOG_DIR"]).is_dir() and Path(env["FLINK_CONF_DIR"]).is_dir()
    assert KafkaService(fresh)._properties().is_file()
    assert PrometheusService(fresh).write_conf().is_file()
    assert ensure_model_config(fresh).is_file() and (fresh.model_base_path / fresh.serving.model_name).is_dir()
    assert ServingService(fresh).monitoring_config().is_file()


def test_the_catalog_the_offline_store_and_a_tenant_on_a_fresh_home(fresh):
    from liveml.model_labels import history_path as _history_path
    from liveml.offline import OfflineStore
    from liveml.stack.catalog import CatalogService
    from liveml.tenant import write_tenant_config

    CatalogService(fresh)._start()
    assert fresh.sqlite_path.is_file() and fresh.warehouse_path.is_dir()
    store = OfflineStore.from_config(fresh)
    assert store.tmp_dir == fresh.home_path / "tmp" / "duckdb" and store.tmp_dir.is_dir()
    tenant = load_config(write_tenant_config(fresh, "t1", 3), env={})
    assert tenant.home_path == fresh.home_path
    _history_path(fresh).write_text("{}")


def test_a_relative_home_is_under_the_checkout_wherever_the_command_runs(tmp_path, monkeypatch):
    """OfflineStore.from_config and bench/training_set.py joined the raw `home` setting to the working
    directory (Path(cfg.home)); a relative home is relative to the checkout (home_path) for everyone."""
    import liveml.config
    from liveml.figures import figures_file
    from liveml.offline import OfflineStore
    from liveml.stack.catalog import CatalogService

    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(liveml.config, "REPO_ROOT", checkout)
    monkeypatch.chdir(elsewhere)
    cfg = load_config(write_test_config(tmp_path / "conf", OFFLINE_PORTS), env={}, overrides={"home": "rel-home"})
    assert cfg.home_path == checkout / "rel-home"
    CatalogService(cfg)._start()
    assert OfflineStore.from_config(cfg).tmp_dir == checkout / "rel-home" / "tmp" / "duckdb"
    assert figures_file(cfg, "training_set") == checkout / "rel-home" / "bench" / "training_set.json"
    assert list(elsewhere.iterdir()) == []


def test_the_demo_sends_a_failed_step_to_a_log_that_exists_once_the_stack_ran(fresh):
    """A failed step's `read:` line named <home>/flink/log, which nothing writes: Flink's logs are in
    <home>/logs (FLINK_LOG_DIR, and each service's own log)."""
    from liveml.demo import STEPS
    from liveml.flink import flink_env

    logs = Path(flink_env(fresh)["FLINK_LOG_DIR"])
    for step in STEPS:
        assert fresh.path(step.log) == logs or fresh.path(step.log).parent == logs, (step.name, step.log)
    assert 'home_file("logs", "demo-train.log")' in (REPO_ROOT / "liveml" / "demo.py").read_text()


# --- the lint: no path under the home is made or written outside the helper ---------------------------
def _is_path_call(node: ast.AST) -> bool:
    """``<config>.path(...)``: a name under the home, for reading and quoting only."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "path"


def _problems(path: Path) -> list[str]:
    return _problems_in(path.read_text(), str(path.relative_to(REPO_ROOT)), helper=path == HELPER)


def _problems_in(source: str, rel: str, helper: bool = False) -> list[str]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        # a directory made by hand instead of by liveml.config.made_dir
        if isinstance(node, ast.Call) and (
                getattr(node.func, "attr", None) in ("mkdir", "makedirs")) and not helper:
            found.append(f"{where}: makes a directory itself; name it with cfg.home_dir/home_file, or "
                         "call liveml.config.made_dir on a path a caller handed over")
        # the home joined by hand: Path(cfg.home) is relative to the working directory, not the checkout
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path" and any(
                isinstance(a, ast.Attribute) and a.attr == "home" for a in node.args):
            found.append(f"{where}: Path(<config>.home) is the raw setting; use cfg.home_dir/home_file/path")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Attribute) \
                and node.left.attr == "home_path":
            found.append(f"{where}: home_path / ... by hand; use cfg.home_dir/home_file/path")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "joinpath" and \
                getattr(node.func.value, "attr", None) == "home_path" and not helper:
            found.append(f"{where}: home_path.joinpath by hand; use cfg.home_dir/home_file/path")
    # a file written at a path that was only named (cfg.path, or a function or property of the module that
    # returns such a name), so its folder may not exist
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    namers: set[str] = set()

    def names_path(expr: ast.AST, names: set[str] = frozenset()) -> bool:
        return any(_is_path_call(x) or (isinstance(x, ast.Name) and x.id in names)
                   or (isinstance(x, ast.Call) and getattr(x.func, "id", None) in namers)
                   or (isinstance(x, ast.Attribute) and x.attr in namers) for x in ast.walk(expr))

    while True:  # what returns a name under the home, transitively within the module
        more = {fn.name for fn in functions if fn.name not in namers and any(
                isinstance(r, ast.Return) and r.value is not None and names_path(r.value) for r in ast.walk(fn))}
        if not more:
            break
        namers |= more
    for fn in functions:
        named = {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) and names_path(n.value)
                 for t in n.targets if isinstance(t, ast.Name)}
        for n in ast.walk(fn):
            if not isinstance(n, ast.Call):
                continue
            where = f"{rel}:{n.lineno}"
            if isinstance(n.func, ast.Attribute) and n.func.attr in ("write_text", "write_bytes", "touch") \
                    and names_path(n.func.value, named):
                found.append(f"{where}: writes a path named with cfg.path; name it with cfg.home_file")
            if getattr(n.func, "id", None) == "open" and len(n.args) > 1 and names_path(n.args[0], named) \
                    and isinstance(n.args[1], ast.Constant) and set(str(n.args[1].value)) & set("wax"):
                found.append(f"{where}: opens for writing a path named with cfg.path; use cfg.home_file")
    return found


def test_no_module_makes_or_writes_a_path_under_the_home_without_the_helper():
    problems = [p for path in LINTED for p in _problems(path)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("source, kind", [
    ("def f(cfg):\n    out = cfg.path('bench', 'x.json')\n    out.write_text('{}')\n", "writes a path named"),
    ("def f(cfg):\n    cfg.path('logs').mkdir(parents=True)\n", "makes a directory"),
    ("from pathlib import Path\ndef f(base):\n    return Path(base.home) / 'bench'\n", "Path(<config>.home)"),
    ("def f(cfg):\n    with open(cfg.path('logs', 'a.log'), 'w') as fh:\n        pass\n", "opens for writing"),
    ("def f(cfg):\n    return cfg.home_path / 'tmp'\n", "home_path / ..."),
    ("def where(cfg):\n    return cfg.path('serving') / 'h.json'\n\ndef f(cfg):\n    where(cfg).write_text('')\n",
     "writes a path named"),
    ("class S:\n    @property\n    def conf(self):\n        return self.cfg.path('c')\n\n    def w(self):\n"
     "        (self.conf / 'x.yaml').write_text('')\n", "writes a path named"),
])
def test_the_lint_catches_the_kind(source, kind):
    """The lint itself, on the fault of the issue and its siblings (so it cannot pass by seeing nothing)."""
    assert any(kind in p for p in _problems_in(source, "bench/probe.py")), _problems_in(source, "bench/probe.py")
