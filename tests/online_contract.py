"""One contract suite for every online store: the in-memory twin (unit) and Redis (integration)."""

from __future__ import annotations

from iceberg_schemas.features import view

V = view("pickup_area_1h")
H = 3_600_000


def vals(n: int, fare: float) -> dict:
    return {"trips_count_1h": n, "fare_avg_1h": fare, "fare_max_1h": fare, "trip_miles_avg_1h": None}


def check_roundtrip(store) -> None:
    store.write(V, [(8, 10 * H, vals(3, 12.5))], write_time_ms=10 * H + 5)
    (row,) = store.get(V, [8], now_ms=10 * H + 1000)
    assert row.status == "ok"
    assert row.values == {"trips_count_1h": 3, "fare_avg_1h": 12.5, "fare_max_1h": 12.5, "trip_miles_avg_1h": None}
    assert row.event_time_ms == 10 * H and row.write_time_ms == 10 * H + 5
    assert row.age_s == 1.0


def check_older_never_overwrites(store) -> None:
    store.write(V, [(9, 10 * H, vals(5, 20.0))])
    assert store.write(V, [(9, 9 * H, vals(1, 1.0))]) == 0
    (row,) = store.get(V, [9], now_ms=10 * H)
    assert row.values["trips_count_1h"] == 5
    assert store.write(V, [(9, 11 * H, vals(6, 21.0))]) == 1
    assert store.get(V, [9], now_ms=11 * H)[0].values["trips_count_1h"] == 6


def check_a_batch_coalesces_to_the_latest(store) -> None:
    rows = [(10, 5 * H + i, vals(i, float(i))) for i in (3, 1, 7, 2)]
    assert store.write(V, rows) == 1
    assert store.get(V, [10], now_ms=5 * H + 10)[0].values["trips_count_1h"] == 7


def check_ttl_is_enforced_at_read(store) -> None:
    store.write(V, [(11, 10 * H, vals(2, 5.0))])
    fresh = store.get(V, [11], now_ms=10 * H + V.ttl_s * 1000)[0]
    expired = store.get(V, [11], now_ms=10 * H + V.ttl_s * 1000 + 1)[0]
    assert fresh.status == "ok"
    assert expired.status == "expired" and expired.values == {}


def check_missing_and_not_yet_known(store) -> None:
    store.write(V, [(12, 10 * H, vals(2, 5.0))])
    missing, future = store.get(V, [999, 12], now_ms=9 * H)
    assert missing.status == "missing" and future.status == "missing"


def check_replay_converges(store) -> None:
    """Writing the same rows twice, in any order, ends where writing them once does."""
    rows = [(13, 7 * H + i * 1000, vals(i, float(i))) for i in range(20)]
    store.write(V, rows[10:])
    store.write(V, rows[:10])
    store.write(V, rows)
    assert store.get(V, [13], now_ms=7 * H + 20_000)[0].values["trips_count_1h"] == 19


def check_ties_follow_the_tie_rule(store) -> None:
    """Issue 13's item 3 online: rows of one event time, computed one after another with values 1, 2, 3.
    The latest computed_at wins in whatever order or batches they arrive; then the greatest source id."""
    t = 6 * H
    rows = [(14, t, vals(k, float(k)), t + 10 * k, f"s{k}") for k in (1, 2, 3)]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        key = 14 + 100 * order[0] + 10 * order[1] + order[2]
        for i in order:  # one row per write: the stored row decides
            store.write(V, [(key, *rows[i][1:])])
        assert store.get(V, [key], now_ms=t)[0].values["trips_count_1h"] == 3, order
        store.write(V, [(key + 1000, *rows[i][1:]) for i in order])  # one batch: coalesced by the same rule
        assert store.get(V, [key + 1000], now_ms=t)[0].values["trips_count_1h"] == 3, order
    # equal event time and computed_at: the greatest source id, in either order
    store.write(V, [(15, t, vals(8, 8.0), t, "trip-b")])
    assert store.write(V, [(15, t, vals(7, 7.0), t, "trip-a")]) == 0
    store.write(V, [(16, t, vals(7, 7.0), t, "trip-a")])
    assert store.write(V, [(16, t, vals(8, 8.0), t, "trip-b")]) == 1
    assert [r.values["trips_count_1h"] for r in store.get(V, [15, 16], now_ms=t)] == [8, 8]
    # an earlier computed_at never overwrites, even written later (a backfill load under a live stream)
    store.write(V, [(17, t, vals(3, 3.0), t + 30, "s3")])
    assert store.write(V, [(17, t, vals(0, 0.0), t + 5, "s9")]) == 0
    assert store.get(V, [17], now_ms=t)[0].values["trips_count_1h"] == 3


CHECKS = [check_roundtrip, check_ties_follow_the_tie_rule, check_older_never_overwrites, check_a_batch_coalesces_to_the_latest,
          check_ttl_is_enforced_at_read, check_missing_and_not_yet_known, check_replay_converges]
