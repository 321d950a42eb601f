"""Where a job's state lives and which one a submission resumes from, without a cluster."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from liveml import flink, job_state
from liveml.config import load_config
from liveml.errors import LivemlError

pytestmark = pytest.mark.unit


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides={"home": str(tmp_path)}, env={})


def _meta(directory: Path, mtime: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = directory / "_metadata"
    meta.write_bytes(b"x")
    os.utime(meta, (mtime, mtime))
    return directory


def test_state_is_kept_per_job_and_tenant(cfg):
    staging = load_config(overrides={"home": str(cfg.home_path), "kafka": {"topic_prefix": "staging-"}}, env={})
    assert job_state.job_dir(cfg, "features") == cfg.path("flink", "jobs", "features")
    assert job_state.job_dir(staging, "features") == cfg.path("flink", "jobs", "staging-features")
    assert job_state.checkpoint_dir(cfg, "enrich").parent == job_state.savepoint_dir(cfg, "enrich").parent


def test_the_newest_complete_savepoint_or_checkpoint_wins(cfg):
    now = time.time()
    sp = _meta(job_state.savepoint_dir(cfg, "features") / "savepoint-abcdef-0123456789ab", now - 300)
    chk = _meta(job_state.checkpoint_dir(cfg, "features") / ("a" * 32) / "chk-7", now - 60)
    (job_state.checkpoint_dir(cfg, "features") / ("a" * 32) / "chk-8").mkdir()  # in progress: no _metadata
    points = job_state.restore_points(cfg, "features")
    assert [(p.kind, p.path) for p in points] == [("checkpoint", chk), ("savepoint", sp)]
    assert points[0].job_id == "a" * 32 and points[1].job_id == "abcdef"
    os.utime(sp / "_metadata", (now, now))
    assert job_state.latest(cfg, "features").path == sp
    assert job_state.latest(cfg, "enrich") is None


def test_a_fresh_start_hides_older_state(cfg):
    _meta(job_state.savepoint_dir(cfg, "features") / "savepoint-abcdef-0123456789ab", time.time() - 60)
    job_state.mark_fresh(cfg, "features", since=time.time() - 30)  # when the fresh submission began
    assert job_state.latest(cfg, "features") is None
    # the fresh run's first checkpoint may complete before the submission returns and marks
    newer = _meta(job_state.checkpoint_dir(cfg, "features") / ("b" * 32) / "chk-1", time.time() - 10)
    assert job_state.latest(cfg, "features").path == newer


def test_bounded_runs_keep_no_state(cfg):
    assert job_state.keeps_state("features", bounded=False)
    assert not job_state.keeps_state("features", bounded=True)
    assert not job_state.keeps_state("backfill", bounded=False)
    assert job_state.run_options("proof", []).bounded  # the proof job is bounded unless --unbounded
    assert not job_state.run_options("proof", ["--unbounded"]).bounded
    assert job_state.run_options("features", ["--bounded", "--views", "x"]).bounded
    assert job_state.run_options("enrich", ["--since-ms", "5"]).since_ms == 5


def test_submission_plan_resumes_unless_told_otherwise(cfg):
    assert flink.state_plan(cfg, "features", [], fresh=False)["resumed_from"] is None
    sp = _meta(job_state.savepoint_dir(cfg, "features") / "savepoint-abcdef-0123456789ab", time.time())
    plan = flink.state_plan(cfg, "features", [], fresh=False)
    assert plan["point"].path == sp and plan["resumed_from"]["kind"] == "savepoint"
    assert plan["start"].startswith("from savepoint savepoint-abcdef-0123456789ab")
    for args, fresh, why in ((["--bounded"], False, "bounded"), ([], True, "--fresh"),
                             (["--since-ms", "7"], False, "--since-ms 7")):
        plan = flink.state_plan(cfg, "features", args, fresh)
        assert "point" not in plan and plan["resumed_from"] is None and why in plan["start"], (args, plan)
    assert not flink.state_plan(cfg, "backfill", ["--from-ms", "0"], False)["keeps_state"]


def test_run_command_restores_with_s_before_the_job_file(cfg, tmp_path):
    point = tmp_path / "savepoint-abcdef-0123456789ab"
    cmd = flink.run_command(cfg, "features", ["--views", "a"], restore=point, allow_non_restored_state=True)
    assert cmd[cmd.index("-s") + 1] == point.as_uri()
    assert cmd.index("-s") < cmd.index("-n") < cmd.index("-py") and cmd[-2:] == ["--views", "a"]
    assert "-s" not in flink.run_command(cfg, "features", [])


def test_key_of_a_running_job_is_the_directory_it_checkpoints_into(cfg):
    (job_state.checkpoint_dir(cfg, "enrich") / ("c" * 32)).mkdir(parents=True)
    assert job_state.key_of_job(cfg, "c" * 32) == "enrich"
    assert job_state.key_of_job(cfg, "d" * 32) is None  # a bounded run or a batch job: cancelled, not saved


def test_prune_keeps_what_can_be_resumed_and_active_runs(cfg):
    now = time.time()
    root = job_state.checkpoint_dir(cfg, "features")
    old_run = _meta(root / ("1" * 32) / "chk-3", now - 600).parent
    active_run = (root / ("2" * 32))
    active_run.mkdir(parents=True)
    saves = [_meta(job_state.savepoint_dir(cfg, "features") / f"savepoint-{i}{i}{i}{i}{i}{i}-0123456789ab",
                   now - 500 + i) for i in range(5)]
    job_state.record_plan(cfg, "features", "1" * 32, ["SELECT 1"])
    job_state.record_plan(cfg, "features", "444444" + "0" * 26, ["SELECT 1"])
    job_state.prune(cfg, "features", active_ids=["2" * 32], keep_savepoints=3)
    assert not old_run.exists() and active_run.exists()
    assert [s.exists() for s in saves] == [False, False, True, True, True]
    assert sorted(p.stem[:6] for p in job_state.plans_dir(cfg, "features").glob("*.json")) == ["444444"]
    assert job_state.latest(cfg, "features").path == saves[-1]


def test_a_changed_plan_is_refused_and_the_same_plan_resumes(cfg):
    statements = ["CREATE TEMPORARY VIEW a AS SELECT 1", "INSERT INTO t SELECT * FROM a"]
    job_state.record_plan(cfg, "features", "abcdef" + "0" * 26, statements)
    where = "file:/x/flink/jobs/features/savepoints/savepoint-abcdef-0123456789ab"
    job_state.check_plan(cfg, "features", where, statements)  # the same plan: resumes
    job_state.check_plan(cfg, "features", "file:/x/savepoint-999999-0123456789ab", ["other"])  # unknown: not judged
    with pytest.raises(job_state.PlanChanged, match=r"statement 2 was .*INSERT INTO t.* --fresh"):
        job_state.check_plan(cfg, "features", where, [statements[0], "INSERT INTO u SELECT * FROM a"])
    chk = "file:///x/checkpoints/" + "abcdef" + "0" * 26 + "/chk-4"
    assert job_state.point_job_id(chk) == "abcdef" + "0" * 26
    with pytest.raises(LivemlError):
        job_state.check_plan(cfg, "features", chk, statements[::-1])


class _FakeTableEnv:
    def __init__(self):
        self.executed, self.inserts = [], []

    def execute_sql(self, sql):
        self.executed.append(sql)

    def create_statement_set(self):
        env = self

        class _Set:
            def add_insert_sql(self, sql):
                env.inserts.append(sql)

        return _Set()

    def get_config(self):
        return "config"


def test_plan_recorder_notes_statements_without_connector_options():
    from flink_jobs.common import PlanRecorder

    t_env = _FakeTableEnv()
    rec = PlanRecorder(t_env)
    rec.execute_sql("CREATE CATALOG IF NOT EXISTS liveml WITH ('uri' = 'jdbc:sqlite:/a')")
    rec.execute_sql("CREATE TEMPORARY TABLE k (\n  payload STRING\n) WITH (\n  'topic' = 't1-trips'\n)")
    rec.create_statement_set().add_insert_sql("INSERT INTO x SELECT * FROM k")
    assert rec.statements[1:] == ["CREATE TEMPORARY TABLE k (\n  payload STRING\n)", "INSERT INTO x SELECT * FROM k"]
    assert rec.statements[0].startswith("-- Flink 2.")  # another Flink numbers the operators its own way
    assert len(t_env.executed) == 2 and t_env.inserts == ["INSERT INTO x SELECT * FROM k"]
    assert rec.get_config() == "config"  # everything else is the real environment's


def test_kafka_sources_start_from_committed_offsets_of_a_stable_group(cfg):
    from flink_jobs.common import consumer_group, kafka_source_options

    opts = kafka_source_options(cfg, "trips", consumer_group(cfg, "features-trips"))
    assert opts["properties.group.id"] == "liveml-features-trips"
    assert opts["scan.startup.mode"] == "group-offsets" and opts["properties.auto.offset.reset"] == "earliest"
    since = kafka_source_options(cfg, "trips", "g", since_ms=5)
    assert since["scan.startup.mode"] == "timestamp" and "properties.auto.offset.reset" not in since
    staging = load_config(overrides={"kafka": {"topic_prefix": "staging-"}}, env={})
    assert consumer_group(staging, "enrich") == "staging-liveml-enrich"


def test_state_configuration_retains_checkpoints_of_unbounded_runs_only(cfg):
    from flink_jobs.common import state_configuration

    kept = state_configuration(cfg, "features", bounded=False).to_dict()
    assert kept["execution.checkpointing.dir"] == job_state.checkpoint_dir(cfg, "features").as_uri()
    assert kept["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    bounded = state_configuration(cfg, "features", bounded=True).to_dict()
    assert bounded["execution.checkpointing.dir"] == job_state.bounded_dir(cfg, "features").as_uri()
    assert bounded["execution.checkpointing.externalized-checkpoint-retention"] == "NO_EXTERNALIZED_CHECKPOINTS"
    assert state_configuration(cfg, "backfill").to_dict() == {}


def test_a_second_run_of_a_job_for_the_same_tenant_is_refused(cfg, monkeypatch):
    """Two feature jobs over the same topics write every event twice; a bounded run counts too."""
    (job_state.checkpoint_dir(cfg, "features") / ("e" * 32)).mkdir(parents=True)
    (job_state.bounded_dir(cfg, "enrich") / ("f" * 32)).mkdir(parents=True)
    jobs = [{"id": "e" * 32, "state": "RUNNING"}, {"id": "f" * 32, "state": "RUNNING"}]
    monkeypatch.setattr(flink, "list_jobs", lambda c: jobs)
    with pytest.raises(LivemlError, match=f"features already runs for features as Flink job {'e' * 32}"):
        flink.refuse_second_run(cfg, cfg, "features")
    with pytest.raises(LivemlError, match="cancel " + "f" * 32):
        flink.refuse_second_run(cfg, cfg, "enrich")
    staging = load_config(overrides={"home": str(cfg.home_path), "kafka": {"topic_prefix": "staging-"}}, env={})
    flink.refuse_second_run(cfg, staging, "features")  # another tenant's job is no obstacle
    jobs[0]["state"] = "CANCELED"
    flink.refuse_second_run(cfg, cfg, "features")


def test_every_stateful_job_file_keeps_and_checks_its_state():
    """A job named in STATEFUL_JOBS (the feedback job, when it comes) must configure its state directory and
    go through execute_resumable, or `liveml submit` would look for state the job never writes."""
    for job in job_state.STATEFUL_JOBS:
        source = (Path(flink.REPO_ROOT) / flink.JOBS[job]).read_text()
        assert f'state_configuration(cfg, "{job}"' in source, job
        assert f'execute_resumable(t_env, cfg, "{job}"' in source, job
