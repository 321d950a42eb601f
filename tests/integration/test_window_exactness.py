"""A window's aggregates depend only on the events inside it, however long the job has run.

One key gets a million events whose values do not add exactly in binary floating point (0.1, 0.7, 3.25 …),
through the real feature job on the real cluster. Flink's OVER window adds each event to a running
accumulator and retracts it when it leaves the window; with a DOUBLE accumulator the error of a million
additions and retractions stays in the sum (an average over one 3.25 fare came out 3.2499999…). Every row the
job wrote, and the value left in Redis, is checked against a fresh computation over that row's window alone.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from flink_jobs import replay as rp
from iceberg_schemas.features import view
from liveml.config import load_config
from liveml.flink import wait_for_job
from liveml.online.redis import RedisOnlineStore
from liveml.tenant import create_tenant
from tests.conftest import plain_flink_run
from tests.integration.test_features_job import read_table

pytestmark = pytest.mark.integration

N_EVENTS = 1_000_000
STEP_MS = 60_000  # one event a minute: a 1 h window holds 61 of them, and the stream spans 694 days
AREA = 1
FARES = (0.1, 0.7, 3.25, 10.65, 53.05, 0.3, 7.77, 0.01)  # none of them is a binary fraction
MILES = (0.1, 0.7, 0.3, 2.2, 0.05)


def events(start_ms: int) -> list[rp.Event]:
    out = []
    for i in range(N_EVENTS):
        t = start_ms + i * STEP_MS
        out.append(rp.Event(t, 1, rp.TRIPS_TOPIC, f"x-{i}", {
            "trip_id": f"x-{i}", "event_type": "end", "event_time": t, "pickup_community_area": AREA,
            "company": "Exact Cab", "fare": FARES[i % len(FARES)], "trip_miles": MILES[i % len(MILES)],
            "trip_seconds": 60}))
    return out


def window_reference(times: np.ndarray, values: np.ndarray, window_ms: int, per_unit: int):
    """Per event: count, exact average (integer units summed, one division) and max over
    ``[t - window, t]``, computed directly from the events, not from any running state."""
    units = np.floor(values * per_unit + 0.5).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(units)])
    lo = np.searchsorted(times, times - window_ms, side="left")
    hi = np.arange(len(times)) + 1
    n = hi - lo
    avg = (csum[hi] - csum[lo]).astype(np.float64) / (n.astype(np.float64) * per_unit)
    width = int(n.max())
    padded = np.concatenate([np.full(width - 1, -np.inf), values])
    maxes = np.lib.stride_tricks.sliding_window_view(padded, width).max(axis=1)  # uniform spacing: last n
    return n, avg, maxes


def running_double_average(values: np.ndarray, width: int) -> float:
    """What a running DOUBLE accumulator ends at after adding every event and retracting each as it leaves
    (Flink's AVG(DOUBLE) over a window of ``width`` events): the flaw the exact form removes."""
    total = 0.0
    for i, v in enumerate(values.tolist()):
        total += v
        if i >= width:
            total -= values[i - width]
    return total / width


@pytest.fixture(scope="module")
def long_run(stack_config):
    tenant = create_tenant(load_config(stack_config, env={}), "exact", 7)
    cfg = load_config(tenant, env={})
    start_ms = int(time.time() * 1000) - (N_EVENTS + 60) * STEP_MS
    evs = events(start_ms)
    rp.replay(evs, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix)
    job_id = plain_flink_run(cfg.flink.port, "flink_jobs/features_job.py", tenant, "--bounded",
                             "--views", "pickup_area_1h")
    assert wait_for_job(cfg, job_id, timeout=1500) == "FINISHED"
    times = np.array([e.time_ms for e in evs], dtype=np.int64)
    fares = np.array([e.value["fare"] for e in evs])
    miles = np.array([e.value["trip_miles"] for e in evs])
    return tenant, cfg, times, fares, miles


def test_the_values_do_not_add_exactly_in_floating_point():
    """The test's inputs are sensitive: a running double sum over them has drifted by the end."""
    vals = np.array([FARES[i % len(FARES)] for i in range(N_EVENTS)])
    width = 61
    exact = float(np.floor(vals[-width:] * 100 + 0.5).sum()) / (width * 100)
    assert running_double_average(vals, width) != exact


def test_every_row_of_a_million_equals_its_window_recomputed(long_run):
    tenant, cfg, times, fares, miles = long_run
    v = view("pickup_area_1h")
    got = read_table(tenant, v.table)
    got = got.assign(ms=(got["event_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1))
    got = got.sort_values("ms", kind="stable").reset_index(drop=True)
    assert len(got) == N_EVENTS and got["source_id"].is_unique
    assert (got["ms"].to_numpy() == times).all()
    n, fare_avg, fare_max = window_reference(times, fares, v.window_s * 1000, 100)
    _, miles_avg, _ = window_reference(times, miles, v.window_s * 1000, 100)
    assert (got["trips_count_1h"].to_numpy() == n).all()
    np.testing.assert_array_equal(got["fare_avg_1h"].to_numpy(), fare_avg)
    np.testing.assert_array_equal(got["fare_max_1h"].to_numpy(), fare_max)
    np.testing.assert_array_equal(got["trip_miles_avg_1h"].to_numpy(), miles_avg)
    # the last row is no worse than the first full window: nothing accumulated over the run
    full = np.flatnonzero(n == n.max())
    assert got["fare_avg_1h"].iloc[full[0]] == fare_avg[full[0]] and got["fare_avg_1h"].iloc[-1] == fare_avg[-1]


def test_redis_holds_the_last_window_exactly(long_run):
    tenant, cfg, times, fares, miles = long_run
    v = view("pickup_area_1h")
    n, fare_avg, fare_max = window_reference(times, fares, v.window_s * 1000, 100)
    _, miles_avg, _ = window_reference(times, miles, v.window_s * 1000, 100)
    row, = RedisOnlineStore(cfg.redis.url).get(v, [AREA], now_ms=int(times[-1]) + 1)
    assert row.status == "ok" and row.event_time_ms == times[-1]
    assert row.values == {"trips_count_1h": int(n[-1]), "fare_avg_1h": fare_avg[-1], "fare_max_1h": fare_max[-1],
                          "trip_miles_avg_1h": miles_avg[-1]}
