"""The replay producer: real Chicago taxi trips into Kafka, in event-time order, as the stream's source.

Each trip becomes a start event and an end event on topic `trips` (the end carries fare, miles and
seconds), and a label (the tip) on topic `labels` some time after the trip ended. Trip ids are stable:
row ``i`` of the CSV is ``trip-000i`` in every replay, and the ``k``-th resampled trip, a copy of row ``i``,
is ``trip-000i-a<k>``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from iceberg_schemas.sources import LABELS, TRIPS

TRIPS_TOPIC = TRIPS.topic
LABELS_TOPIC = LABELS.topic
LABEL_DELAY_S = 15 * 60  # the tip becomes known 15 minutes (event time) after the trip ends


def data_path() -> Path:
    """The real data set shipped inside the tfx wheel (15,002 trips, 2013-2016)."""
    import tfx

    return Path(tfx.__file__).parent / "examples" / "chicago_taxi_pipeline" / "data" / "simple" / "data.csv"


def load_trips(path: Path | None = None) -> pd.DataFrame:
    df = pd.read_csv(path or data_path())
    df.insert(0, "trip_id", [f"trip-{i:05d}" for i in range(len(df))])
    df["trip_seconds"] = df["trip_seconds"].fillna(0).astype("int64")
    df["start_ms"] = df["trip_start_timestamp"].astype("int64") * 1000
    return df


# --- drift scenarios: each shifts one real distribution, the rest of the joint distribution is kept ------
def _fare_up(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    out = df.copy()
    out["fare"] = (out["fare"] * 1.4).round(2)
    return out


def _card_share_up(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    out = df.copy()
    cash = out.index[out["payment_type"] == "Cash"]
    flip = rng.choice(cash, size=len(cash) // 2, replace=False)
    out.loc[flip, "payment_type"] = "Credit Card"
    return out


def _tips_down(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    out = df.copy()
    out["tips"] = (out["tips"] * 0.5).round(2)
    return out


DRIFT_SCENARIOS: dict[str, Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]] = {
    "fare_up": _fare_up,  # fares up 40%
    "card_share_up": _card_share_up,  # half of the cash trips pay by card
    "tips_down": _tips_down,  # concept drift: the same trips tip half as much
}


def amplify(df: pd.DataFrame, k: int, rng: np.random.Generator, start_ms: int, trips_per_s: float) -> pd.DataFrame:
    """Resample ``k * len(df)`` real rows with fresh trip ids and new, evenly paced start times."""
    n = k * len(df)
    picks = rng.integers(0, len(df), size=n)
    out = df.iloc[picks].reset_index(drop=True).copy()
    # a fresh id per resampled trip (a row can be drawn more than once), still naming the real row it copies
    out["trip_id"] = [f"{t}-a{i}" for i, t in enumerate(out["trip_id"])]
    out["start_ms"] = start_ms + (np.arange(n) * 1000.0 / trips_per_s).astype("int64")
    return out


def _num(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def _int(v):
    v = _num(v)
    return None if v is None else int(v)


@dataclass(frozen=True)
class Event:
    time_ms: int
    order: int  # start < end < label at equal times, so the stream is deterministic
    topic: str
    key: str
    value: dict


def trip_events(df: pd.DataFrame, label_delay_s: int = LABEL_DELAY_S) -> list[Event]:
    events: list[Event] = []
    for row in df.itertuples(index=False):
        start = int(row.start_ms)
        end = start + int(row.trip_seconds) * 1000
        common = {
            "trip_id": row.trip_id,
            "pickup_community_area": _int(row.pickup_community_area),
            "dropoff_community_area": _int(row.dropoff_community_area),
            "company": _num(row.company) if isinstance(row.company, str) else None,
            "payment_type": row.payment_type,
            "pickup_latitude": _num(row.pickup_latitude), "pickup_longitude": _num(row.pickup_longitude),
            "dropoff_latitude": _num(row.dropoff_latitude), "dropoff_longitude": _num(row.dropoff_longitude),
        }
        events.append(Event(start, 0, TRIPS_TOPIC, row.trip_id, {**common, "event_type": "start",
                                                                 "event_time": start}))
        events.append(Event(end, 1, TRIPS_TOPIC, row.trip_id, {
            **common, "event_type": "end", "event_time": end, "fare": _num(row.fare),
            "trip_miles": _num(row.trip_miles), "trip_seconds": int(row.trip_seconds)}))
        label_time = end + label_delay_s * 1000
        tips, fare = float(row.tips), float(row.fare)
        events.append(Event(label_time, 2, LABELS_TOPIC, row.trip_id, {
            "trip_id": row.trip_id, "label_time": label_time, "decision_time": end, "company": common["company"],
            "fare": fare, "tips": tips, "big_tipper": bool(tips > 0.2 * fare)}))
    events.sort(key=lambda e: (e.time_ms, e.order, e.key))
    return events


def trip_tables(df: pd.DataFrame, label_delay_s: int = LABEL_DELAY_S) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows :func:`trip_events` would put in ``raw.trips`` and ``labels.trips``, built column-wise.

    For bulk loads (benchmarks of the offline store) where a million events through Python objects would
    cost more than the thing measured. Times are UTC timestamps; ``is_late`` is False (in order by design).
    """
    def ts(ms) -> pd.Series:
        return pd.to_datetime(np.asarray(ms, dtype="int64"), unit="ms", utc=True)

    start = df["start_ms"].to_numpy("int64")
    end = start + df["trip_seconds"].to_numpy("int64") * 1000
    company = df["company"].where(df["company"].map(lambda c: isinstance(c, str)), None)
    common = pd.DataFrame({
        "trip_id": df["trip_id"].to_numpy(),
        "pickup_community_area": df["pickup_community_area"].astype("Int32"),
        "dropoff_community_area": df["dropoff_community_area"].astype("Int32"),
        "company": company.to_numpy(), "payment_type": df["payment_type"].to_numpy(),
        "pickup_latitude": df["pickup_latitude"].to_numpy(), "pickup_longitude": df["pickup_longitude"].to_numpy(),
        "dropoff_latitude": df["dropoff_latitude"].to_numpy(),
        "dropoff_longitude": df["dropoff_longitude"].to_numpy(),
    })
    starts = common.assign(event_type="start", event_time=ts(start), fare=np.nan, trip_miles=np.nan,
                           trip_seconds=pd.array([None] * len(df), dtype="Int64"))
    ends = common.assign(event_type="end", event_time=ts(end), fare=df["fare"].to_numpy(),
                         trip_miles=df["trip_miles"].to_numpy(),
                         trip_seconds=df["trip_seconds"].astype("Int64").to_numpy())
    raw = pd.concat([starts, ends], ignore_index=True)
    raw["ingest_time"] = pd.Timestamp.now(tz="UTC")
    raw["is_late"] = False
    fare, tips = df["fare"].astype(float).to_numpy(), df["tips"].astype(float).to_numpy()
    labels = pd.DataFrame({
        "trip_id": df["trip_id"].to_numpy(), "label_time": ts(end + label_delay_s * 1000),
        "decision_time": ts(end), "company": company.to_numpy(), "fare": fare, "tips": tips,
        "big_tipper": tips > 0.2 * fare, "ingest_time": pd.Timestamp.now(tz="UTC"), "is_late": False,
    })
    return raw, labels


BAD_KINDS = ("malformed_json", "missing_field", "wrong_type", "absurd_value")


def corrupt(event: Event, kind: str) -> bytes:
    """A bad version of a real event, for tests and load: what the DLQ must catch."""
    v = dict(event.value)
    if kind == "malformed_json":
        return json.dumps(v).encode()[:-7] + b"#oops"
    if kind == "missing_field":
        v.pop("event_time")
    elif kind == "wrong_type":
        v["event_time"] = "yesterday"
    elif kind == "absurd_value":
        v["event_type"] = "end"
        v["fare"] = -999.0
    return json.dumps(v).encode()


@dataclass
class ReplayStats:
    sent: int = 0
    trips_events: int = 0
    labels: int = 0
    bad: int = 0
    seconds: float = 0.0
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    corrupted: list = field(default_factory=list)  # (trip_id, event_type, kind) of each corrupted event


def replay(events: list[Event], producer, topic_prefix: str = "", speedup: float | None = None, rate: float | None = None,
           limit: int | None = None, bad_fraction: float = 0.0, seed: int = 0,
           on_progress: Callable[[int], None] | None = None, duration_s: float | None = None,
           origin_ms: int | None = None,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> ReplayStats:
    """Send ``events`` in order. ``speedup`` paces by event time / X from ``origin_ms`` (the event time that
    is due at once; default the first event's: pass the wall clock's now to send each event of a live
    stream at its own time); ``rate`` caps events per second; ``duration_s`` stops sending once that much
    wall time has passed (a live stream has no end)."""
    rng = np.random.default_rng(seed)
    stats = ReplayStats()
    todo = events[:limit] if limit else events
    t0 = clock()
    first_ms = origin_ms if origin_ms is not None else (todo[0].time_ms if todo else 0)
    for i, ev in enumerate(todo):
        due = 0.0
        if speedup:
            due = max(0.0, (ev.time_ms - first_ms) / 1000.0 / speedup)
        if rate:
            due = max(due, i / rate)
        if duration_s is not None and max(due, clock() - t0) > duration_s:
            break
        wait = due - (clock() - t0)
        if wait > 0:
            producer.poll(0)
            sleep(wait)
        if ev.topic == TRIPS_TOPIC and bad_fraction and rng.random() < bad_fraction:
            kind = BAD_KINDS[int(rng.integers(len(BAD_KINDS)))]
            payload = corrupt(ev, kind)
            stats.bad += 1
            stats.corrupted.append((ev.key, ev.value.get("event_type"), kind))
        else:
            payload = json.dumps(ev.value).encode()
        while True:
            try:
                producer.produce(topic_prefix + ev.topic, key=ev.key.encode(), value=payload, timestamp=ev.time_ms)
                break
            except BufferError:  # local queue full: let it drain
                producer.poll(0.05)
        stats.sent += 1
        stats.labels += ev.topic == LABELS_TOPIC
        stats.trips_events += ev.topic == TRIPS_TOPIC
        if on_progress and (i % 500 == 0 or i == len(todo) - 1):
            on_progress(i + 1)
            producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} events were not acknowledged by Kafka")
    stats.seconds = clock() - t0
    if stats.sent:
        stats.first_event_ms, stats.last_event_ms = todo[0].time_ms, todo[stats.sent - 1].time_ms
    return stats


def from_now(events: list[Event], now_ms: int) -> list[Event]:
    """The events at or after ``now_ms``: a stream joined mid-flight. With trips resampled to start before
    now, the trips already under way end from now on, so end events (and their predictions) flow at once,
    and paced at ``speedup=1`` each event is sent at its own event time."""
    return [e for e in events if e.time_ms >= now_ms]


def build_events(amplify_k: int = 0, drift: str | None = None, seed: int = 0, trips_per_s: float = 1000.0,
                 start_ms: int | None = None, label_delay_s: int = LABEL_DELAY_S,
                 path: Path | None = None) -> list[Event]:
    rng = np.random.default_rng(seed)
    df = load_trips(path)
    if drift:
        if drift not in DRIFT_SCENARIOS:
            raise ValueError(f"unknown drift scenario {drift!r}; known: {sorted(DRIFT_SCENARIOS)}")
        df = DRIFT_SCENARIOS[drift](df, rng)
    if amplify_k:
        df = amplify(df, amplify_k, rng, start_ms or int(time.time() * 1000), trips_per_s)
    return trip_events(df, label_delay_s)


def kafka_producer(bootstrap_servers: str):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5, "batch.num.messages": 10000,
                     "queue.buffering.max.messages": 500000, "compression.type": "lz4",
                     "enable.idempotence": True})

