"""The feature job's plan, as Flink compiles it (`features_job.py --explain`) against a real catalog.

Flink 2.2's JSON_VALUE parses the payload on every call and its generated code shares no repeated
sub-expressions, so how often the plan reads each field is what an event costs. The job's throughput went
from 5.3k to 14.8k events/s when each field came to be read once (bench/feature_pipeline.py); this pins it.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from iceberg_schemas.features import FEATURE_VIEWS
from iceberg_schemas.sources import SOURCES
from tests.conftest import REPO, env_without_config
from tests.integration.test_features_job import make_tenant

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plan(stack_config) -> str:
    tenant = make_tenant(stack_config, "plan", 1)
    env = env_without_config("FLINK_")
    proc = subprocess.run([sys.executable, "-m", "flink_jobs.features_job", "--explain", "--config", str(tenant)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.split("== Optimized Execution Plan ==")[1].split("== Physical Execution Plan ==")[0]


def test_each_payload_field_is_read_once_per_source(plan):
    sources_with = Counter(f.name for src in SOURCES.values() for f in src.fields)
    times = {src.time_field for src in SOURCES.values()}  # also read by the watermark and the rowtime column
    for name, n_sources in sources_with.items():
        if name in times:
            continue
        reads = plan.count(f"JSON_VALUE(payload, '$.{name}')")
        assert reads == n_sources, f"{name} is read {reads} times in the plan, expected {n_sources}"
    assert plan.count("IS JSON OBJECT(payload)") == len(SOURCES)


def test_each_view_window_is_computed_once_for_both_sinks(plan):
    assert plan.count("OverAggregate(") == len(FEATURE_VIEWS)
    for v in FEATURE_VIEWS:  # and both of the view's sinks read it
        assert f"redis_{v.name}" in plan and f"features.{v.name}]" in plan
