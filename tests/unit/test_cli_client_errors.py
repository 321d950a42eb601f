"""Client commands facing a server that says no: one message with the next step and a non-zero exit, never a
traceback. `liveml predict` runs against the project's own model server, in process, without the model."""

from __future__ import annotations

import json

import pytest
import requests
import yaml

from liveml.config import load_config
from liveml.errors import LivemlError, ServiceError
from serving.testing import export_standin_model, standin_row
from tests.conftest import OFFLINE_PORTS, run_cli, write_test_config
from tests.unit.test_enrich_no_model import empty, unlabelled  # noqa: F401  (fixtures: the same two servers)

pytestmark = pytest.mark.unit


def _config(home, grpc_port: int | None = None, model_name: str = "tip"):
    path = write_test_config(home, OFFLINE_PORTS)
    data = yaml.safe_load(path.read_text())
    if grpc_port is not None:
        data["serving"]["grpc"] = f"127.0.0.1:{grpc_port}"
    data["serving"]["model_name"] = model_name
    path.write_text(yaml.safe_dump(data))
    return path


def _predict(config, *spec: str):
    return run_cli(config, "predict", *spec, "--json", json.dumps(standin_row()), check=False)


def _refused(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    return " ".join(proc.stderr.split())


def test_predict_without_a_model_names_it_and_the_commands(tmp_path, empty):
    err = _refused(_predict(_config(tmp_path, empty.port)))
    assert "error:" in err and "no version of model 'tip' loaded" in err and "NOT_FOUND" in err
    assert "`liveml train`" in err and "`liveml models promote <version> --label stable --model tip`" in err


def test_predict_with_an_unknown_label_or_version_names_it(tmp_path, unlabelled):
    config = _config(tmp_path, unlabelled.port)
    err = _refused(_predict(config, "--label", "stable"))
    assert "no version of model 'tip' under label 'stable'" in err and "liveml models promote" in err
    err = _refused(_predict(config, "--version", "4"))
    assert "no version 4 of model 'tip' loaded" in err and "liveml models list --model tip" in err
    ok = _predict(config, "--version", "1")
    assert ok.returncode == 0 and json.loads(ok.stdout)["version"] == 1, ok.stderr


def test_promote_to_a_version_that_is_not_there_says_what_to_do(tmp_path):
    config = _config(tmp_path, model_name="tips")
    err = _refused(run_cli(config, "models", "promote", "3", check=False))
    assert "tips has no version 3" in err and "versions: none" in err and "`liveml train`" in err
    export_standin_model(load_config(config, env={}).model_base_path / "tips", 1)
    err = _refused(run_cli(config, "models", "promote", "3", check=False))
    assert "versions: [1]" in err and "liveml models list --model tips" in err
    err = _refused(run_cli(config, "models", "promote", "1", "--model", "other", check=False))
    assert "'other' is not in the server's model config" in err and "--model" in err


# --- Flink's REST API: an unknown job id is the user's to fix, not a stack trace ------------------------
class _Response(requests.Response):
    def __init__(self, status: int, body: dict):
        super().__init__()
        self.status_code, self._content = status, json.dumps(body).encode()


@pytest.mark.parametrize("status", [400, 404])
def test_an_unknown_or_malformed_job_id_points_at_liveml_jobs(monkeypatch, tmp_path, status):
    from liveml import flink

    cfg = load_config(overrides={"home": str(tmp_path)}, env={})
    monkeypatch.setattr(requests, "request", lambda *a, **k: _Response(status, {"errors": ["Invalid JobID"]}))
    with pytest.raises(LivemlError, match=r"no Flink job nope .*`liveml jobs`"):
        flink.job_detail(cfg, "nope")


def test_other_refusals_carry_flinks_message(monkeypatch, tmp_path):
    from liveml import flink

    cfg = load_config(overrides={"home": str(tmp_path)}, env={})
    monkeypatch.setattr(requests, "request",
                        lambda *a, **k: _Response(500, {"errors": ["Internal server error.\n<stack>"]}))
    with pytest.raises(ServiceError, match=r"\(500\): Internal server error\.$"):
        flink._rest(cfg, "GET", "/jobs/overview")


def test_an_unreachable_flink_during_a_poll_names_the_fix(tmp_path):
    from liveml import flink

    cfg = load_config(overrides={"home": str(tmp_path),
                                 "flink": {"rest_url": f"http://localhost:{OFFLINE_PORTS['flink_rest']}"}}, env={})
    with pytest.raises(ServiceError, match="liveml up flink"):
        flink.job_detail(cfg, "0" * 32)


def test_predict_sends_a_null_feature_as_the_stream_does():
    """A row copied from predictions.trips (nulls for missing values) must score as it scored in the stream:
    the enrichment job sends NaN, "" or -1 (tfx_pipeline.features.missing_serving_value), not 0."""
    import math

    from liveml.cli_serving import missing_as_the_model_reads_it

    got = missing_as_the_model_reads_it({"fare_avg_1h": None, "company": None, "trips_count_1h": None,
                                         "fare": 12.5, "not_a_feature": None})
    assert math.isnan(got["fare_avg_1h"]) and got["company"] == "" and got["trips_count_1h"] == -1
    assert got["fare"] == 12.5 and got["not_a_feature"] is None
