"""The replay producer's events, from the real data set, without Kafka."""

import json

import numpy as np
import pytest

from flink_jobs import replay as rp

pytestmark = pytest.mark.unit


class FakeProducer:
    """In-memory twin of the confluent-kafka producer interface replay uses."""

    def __init__(self):
        self.sent = []

    def produce(self, topic, key, value, timestamp):
        self.sent.append((topic, key, value, timestamp))

    def poll(self, _):
        return 0

    def flush(self, _):
        return 0


@pytest.fixture(scope="module")
def trips():
    return rp.load_trips()


def test_the_real_data_set(trips):
    assert len(trips) == 15002
    assert trips["trip_id"].is_unique
    assert trips["trip_id"].iloc[42] == "trip-00042"


def test_a_trip_is_start_end_and_a_later_label(trips):
    events = rp.trip_events(trips.head(50))
    assert len(events) == 150
    by_trip = {}
    for e in events:
        by_trip.setdefault(e.key, []).append(e)
    for evs in by_trip.values():
        start, end, label = sorted(evs, key=lambda e: e.order)
        assert (start.value["event_type"], end.value["event_type"]) == ("start", "end")
        assert "fare" not in start.value and "fare" in end.value
        assert end.time_ms - start.time_ms == end.value["trip_seconds"] * 1000
        assert label.topic == "labels" and label.time_ms == end.time_ms + rp.LABEL_DELAY_S * 1000
        assert label.value["big_tipper"] == (label.value["tips"] > 0.2 * label.value["fare"])


def test_events_are_in_event_time_order(trips):
    times = [e.time_ms for e in rp.trip_events(trips.head(2000))]
    assert times == sorted(times)


def test_amplify_gives_fresh_unique_ids_and_keeps_the_rows(trips):
    rng = np.random.default_rng(1)
    out = rp.amplify(trips, 2, rng, start_ms=1_000_000, trips_per_s=100.0)
    assert len(out) == 2 * len(trips)
    assert out["trip_id"].is_unique
    source_ids = out["trip_id"].str.rsplit("-a", n=1).str[0]
    assert source_ids.isin(trips["trip_id"]).all()
    assert (np.diff(out["start_ms"].to_numpy()) >= 0).all() and out["start_ms"].iloc[100] == 1_000_000 + 1000
    # the joint distribution is kept: a resampled row is the real row
    merged = out.assign(src=source_ids).merge(trips, left_on="src", right_on="trip_id", suffixes=("", "_real"))
    assert (merged["fare"].fillna(-1) == merged["fare_real"].fillna(-1)).all()


def test_drift_scenarios_shift_what_they_say(trips):
    rng = np.random.default_rng(0)
    up = rp.DRIFT_SCENARIOS["fare_up"](trips, rng)
    assert up["fare"].sum() == pytest.approx(trips["fare"].sum() * 1.4, rel=1e-3)
    card = rp.DRIFT_SCENARIOS["card_share_up"](trips, rng)
    assert (card["payment_type"] == "Credit Card").mean() > (trips["payment_type"] == "Credit Card").mean() + 0.2
    with pytest.raises(ValueError, match="unknown drift"):
        rp.build_events(drift="nope")


def test_replay_limits_corrupts_and_prefixes(trips):
    events = rp.trip_events(trips.head(400))
    prod = FakeProducer()
    stats = rp.replay(events, prod, topic_prefix="x-", limit=900, bad_fraction=0.1, seed=3)
    assert stats.sent == len(prod.sent) == 900
    assert {t for t, *_ in prod.sent} == {"x-trips", "x-labels"}
    assert 40 < stats.bad < 120 and len(stats.corrupted) == stats.bad
    undecodable = 0
    for _, _, value, _ in prod.sent:
        try:
            json.loads(value)
        except ValueError:
            undecodable += 1
    assert undecodable == sum(k == "malformed_json" for *_, k in stats.corrupted)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_rate_caps_the_pace(trips):
    clock = FakeClock()
    rp.replay(rp.trip_events(trips.head(100))[:60], FakeProducer(), rate=200, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(59 / 200)


def test_speedup_compresses_event_time(trips):
    clock = FakeClock()
    events = rp.trip_events(trips.sort_values("start_ms").head(30))
    rp.replay(events, FakeProducer(), speedup=3600.0, clock=clock, sleep=clock.sleep)
    span_s = (events[-1].time_ms - events[0].time_ms) / 1000
    assert clock.now == pytest.approx(span_s / 3600.0)


def test_trip_tables_hold_what_the_events_carry():
    """The column-wise bulk form equals the event form, field by field, on real trips."""
    import pandas as pd

    df = rp.load_trips().head(300)
    events = rp.trip_events(df)
    raw, labels = rp.trip_tables(df)
    assert len(raw) == sum(e.topic == rp.TRIPS_TOPIC for e in events) and len(labels) == len(df)
    by_key = {(e.value["trip_id"], e.value.get("event_type", "label")): e.value for e in events}
    for row in raw.to_dict("records"):
        ev = by_key[(row["trip_id"], row["event_type"])]
        assert int(row["event_time"].value // 1_000_000) == ev["event_time"]
        for k in ("pickup_community_area", "company", "payment_type", "fare", "trip_miles", "trip_seconds"):
            want, got = ev.get(k), row[k]
            if want is None:
                assert got is None or pd.isna(got), (k, got)
            else:
                assert got == want, (k, got, want)
    for row in labels.to_dict("records"):
        ev = by_key[(row["trip_id"], "label")]
        assert int(row["decision_time"].value // 1_000_000) == ev["decision_time"]
        assert int(row["label_time"].value // 1_000_000) == ev["label_time"]
        assert bool(row["big_tipper"]) == ev["big_tipper"] and row["company"] == ev["company"]


class RecordingProducer(FakeProducer):
    """Notes the fake clock's time of each send."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.sent_at = clock, []

    def produce(self, *args, **kwargs):
        self.sent_at.append(self.clock.now)
        return super().produce(*args, **kwargs)


def test_a_live_stream_joins_mid_flight_and_sends_each_event_at_its_own_time(trips):
    """--since: trips resampled to start 30 min ago; only events from now on are sent, each when due."""
    now_ms = 10_000_000
    events = rp.build_events(amplify_k=1, seed=3, trips_per_s=5.0, start_ms=now_ms - 30 * 60_000)
    live = rp.from_now(events, now_ms)
    assert live and all(e.time_ms >= now_ms for e in live)
    ends = [e for e in live if e.value.get("event_type") == "end"]
    starts = {e.key for e in live if e.value.get("event_type") == "start"}
    assert any(e.key not in starts for e in ends)  # trips already under way end from now on
    clock = FakeClock()
    producer = RecordingProducer(clock)
    stats = rp.replay(live, producer, speedup=1.0, origin_ms=now_ms, duration_s=60, clock=clock, sleep=clock.sleep)
    due = [(e.time_ms - now_ms) / 1000 for e in live[:stats.sent]]
    assert producer.sent_at == pytest.approx(due)  # each at its own event time, from the wall clock's now
    assert stats.sent == sum(d <= 60 for d in due) < len(live)  # and no event past the duration
