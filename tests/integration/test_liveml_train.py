"""`liveml train` as users run it, then lineage: from a pushed version, through `liveml models list`, back
to the exact Iceberg snapshots, which rebuild the same training set."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from tests.conftest import OFFLINE_PORTS, cli_json, run_cli, write_test_config
from tests.offline_fixtures import real_training_set

pytestmark = pytest.mark.integration


def _hashes(rows) -> list[str]:
    return sorted(hashlib.sha256(repr(sorted(r.items())).encode()).hexdigest() for r in rows)


def test_train_push_and_trace_back_to_the_data(tmp_path):
    _, built = real_training_set(tmp_path)
    config = write_test_config(tmp_path, OFFLINE_PORTS)  # no model server: models list still reads the disk
    data = yaml.safe_load(config.read_text())
    data["catalog"] = {"name": "t", "sqlite_path": "c.db", "warehouse": "wh"}
    config.write_text(yaml.safe_dump(data))

    summary = json.loads(run_cli(config, "train", "--train-steps", "300", "--json", timeout=900).stdout)
    assert summary["status"] == "succeeded" and summary["blessed"], summary.get("why")
    assert summary["pushed_version"] == 1 and summary["snapshot_id"] == built["snapshot_id"]
    assert set(summary["components"]) >= {"IcebergExampleGen", "Trainer", "Evaluator"}

    models = cli_json(config, "models", "list")
    assert [m["version"] for m in models] == [1]
    lineage = models[0]["lineage"]
    assert models[0]["metrics"]["auc"] > 0.85 and "log_loss" in models[0]["metrics"]
    assert lineage["training_table"] == "training.tips" and len(lineage["eval_range"]) == 2
    assert lineage["snapshot_ids"] == built["snapshot_ids"]

    rebuilt = cli_json(config, "training-set", "build", "--snapshot-ids", json.dumps(lineage["snapshot_ids"]),
                       "--output", "tips_from_model")
    assert rebuilt["rows"] == built["rows"]
    original = cli_json(config, "query", "training.tips", "--snapshot", str(built["snapshot_id"]))
    assert _hashes(cli_json(config, "query", "training.tips_from_model")) == _hashes(original)
