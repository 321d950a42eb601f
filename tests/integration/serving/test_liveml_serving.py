"""The model server as users run it: `liveml up serving`, `liveml predict`, `liveml models list|promote|rollback`."""

from __future__ import annotations

import json
import time

import pytest

from liveml.config import load_config
from serving.testing import export_standin_model, standin_row
from tests.conftest import cli_json, run_cli

pytestmark = pytest.mark.integration


def _predict(config, *args):
    return json.loads(run_cli(config, "predict", "--json", json.dumps(standin_row()), *args).stdout)


def test_up_predict_promote_rollback(stack_config):
    cfg = load_config(stack_config, env={})
    base = cfg.model_base_path / cfg.serving.model_name
    for v, bias in ((1, -1.0), (2, 1.0)):
        export_standin_model(base, v, bias=bias)
    run_cli(stack_config, "up", "serving")
    try:
        assert cli_json(stack_config, "status", "serving")["services"]["serving"]["up"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the default policy serves the latest version
            listed = {m["version"]: m for m in cli_json(stack_config, "models", "list")}
            if listed.get(2, {}).get("state") == "AVAILABLE":
                break
            time.sleep(0.5)
        assert listed[2]["state"] == "AVAILABLE" and listed[1]["state"] == "NOT_LOADED"
        latest = _predict(stack_config)
        assert latest["version"] == 2 and 0 < latest["outputs"]["probabilities"][0] < 1

        first = cli_json(stack_config, "models", "promote", "1", "--label", "stable")
        assert first["version"] == 1 and first["history"] == [1]
        assert _predict(stack_config, "--label", "stable")["version"] == 1
        cli_json(stack_config, "models", "promote", "2", "--label", "stable")
        stable2 = _predict(stack_config, "--label", "stable")
        assert stable2["version"] == 2 and stable2["outputs"] == latest["outputs"]
        back = cli_json(stack_config, "models", "rollback", "--label", "stable")
        assert back["version"] == 1 and back["history"] == [1]
        stable1 = _predict(stack_config, "--label", "stable")
        assert stable1["version"] == 1 and stable1["outputs"] != latest["outputs"]
        listed = {m["version"]: m for m in cli_json(stack_config, "models", "list")}
        assert listed[1]["labels"] == ["stable"] and listed[1]["state"] == "AVAILABLE"

        # the labels live in the server's config file, so a restart keeps them, as with TF Serving
        run_cli(stack_config, "down", "serving")
        run_cli(stack_config, "up", "serving")
        assert _predict(stack_config, "--label", "stable")["version"] == 1

        bad = run_cli(stack_config, "models", "promote", "9", check=False)
        assert bad.returncode != 0 and "no version 9" in bad.stderr and "Traceback" not in bad.stderr
        nothing = run_cli(stack_config, "models", "rollback", "--label", "canary", check=False)
        assert nothing.returncode != 0 and "nothing to roll back" in nothing.stderr
    finally:
        run_cli(stack_config, "down", "serving", check=False)
    down = run_cli(stack_config, "predict", "--json", json.dumps(standin_row()), check=False)
    assert down.returncode == 5 and "liveml up serving" in down.stderr
