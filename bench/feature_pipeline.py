"""Benchmark: the streaming feature pipeline (Kafka -> Flink features -> Redis + Iceberg).

Figures, all medians or percentiles of this run, on the running local stack (`liveml up`):

* ``events_per_s``: sustained events/s through the whole feature job (every view) at parallelism 2, on a
  backlog of resampled real trips at the real city's event-time density (``density_trips_per_s``: about one
  trip per second, Chicago's city-wide average over the data set's years); the slope of the sources' record
  counts between 10% and 90% of the backlog;
* ``events_per_s_10x_density`` / ``events_per_s_dense``: the same at 10 trips/s, and at 2,000 trips/s, where
  every window holds the whole backlog. Flink's OVER RANGE operator scans all of a key's rows in the window
  for each new event, so the cost per event grows with the events per key per window;
* ``freshness_p50_ms`` / ``freshness_p99_ms``: from produce time (= event time) to visible in Redis, at a
  fixed moderate rate, the whole job at parallelism 2 with its default watermark delay (500 ms);
* ``online_read_p50_ms`` / ``online_read_p99_ms``: ``OnlineStore.get`` of one entity.

Baselines, measured in the same run:

* ``baseline_events_per_s``: a single-process Python consumer (confluent-kafka) computing the same three
  views into Redis, with the same coalesced pipelined writes, on the same backlog: what a user would
  otherwise write by hand;
* ``baseline_read_p50_ms``: a bare redis-py HGETALL, without decoding or the TTL check.

Writes flat JSON to LIVEML_HOME/bench/feature_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict, deque

import numpy as np
import redis

from flink_jobs import replay as rp
from iceberg_schemas.features import view as get_view
from liveml import flink
from liveml.config import load_config
from liveml.figures import figures_file, write_figures
from liveml.online.redis import RedisOnlineStore
from liveml.stack import launcher
from liveml.tenant import create_tenant


NAME = "feature_pipeline"  # LIVEML_HOME/bench/feature_pipeline.json


def tenant(base, name: str, db: int):
    return load_config(create_tenant(base, name, db), env={})


def source_records(cfg, job_id: str) -> int:
    job = flink.job_detail(cfg, job_id)
    return sum(v["metrics"]["write-records"] for v in job["vertices"] if v["name"].startswith("Source:"))


def submit(cfg, *args: str) -> str:
    return flink.submit(cfg, "features", list(args))["job_id"]


def cancel(cfg, job_id: str) -> None:
    flink.cancel_job(cfg, job_id)


# --- 1. throughput ---------------------------------------------------------------------------------------
def measure_flink_throughput(cfg, n_events: int, extra_args: tuple[str, ...] = ()) -> float:
    job_id = submit(cfg, "--parallelism", "2", *extra_args)
    samples = []
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            state = flink.job_detail(cfg, job_id)["state"]
            if state in ("FAILED", "CANCELED"):  # e.g. the TaskManager died: say so, do not wait 15 min
                raise RuntimeError(f"feature job {job_id} is {state} (see `liveml jobs`, LIVEML_HOME/logs)")
            done = source_records(cfg, job_id)
            samples.append((time.monotonic(), done))
            if done >= n_events:
                break
            time.sleep(0.5)
    finally:
        cancel(cfg, job_id)
    return _slope(samples, n_events)


def _slope(samples: list[tuple[float, int]], n: int) -> float:
    lo = next(s for s in samples if s[1] >= 0.1 * n)
    hi = next(s for s in samples if s[1] >= 0.9 * n)
    return (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-6)


class PythonFeatures:
    """The hand-written baseline: the same three views, per-entity deques, coalesced pipelined writes."""

    def __init__(self, store: RedisOnlineStore):
        self.store = store
        self.views = {n: get_view(n) for n in ("pickup_area_1h", "pickup_area_15m", "company_tips_24h")}
        self.win: dict[str, dict] = {n: defaultdict(deque) for n in self.views}

    def _push(self, name: str, entity, t: int, item) -> list:
        q = self.win[name][entity]
        q.append((t, item))
        w = self.views[name].window_s * 1000
        while q and q[0][0] < t - w:
            q.popleft()
        return [i for _, i in q]

    def handle(self, topic: str, ev: dict, out: dict) -> None:
        if topic.endswith("trips"):
            area = ev.get("pickup_community_area")
            if area is None:
                return
            t = ev["event_time"]
            if ev["event_type"] == "end":
                items = self._push("pickup_area_1h", area, t, (ev.get("fare"), ev.get("trip_miles")))
                fares = [f for f, _ in items if f is not None]
                miles = [m for _, m in items if m is not None]
                out["pickup_area_1h"].append((area, t, {
                    "trips_count_1h": len(items), "fare_avg_1h": sum(fares) / len(fares) if fares else None,
                    "fare_max_1h": max(fares) if fares else None,
                    "trip_miles_avg_1h": sum(miles) / len(miles) if miles else None}))
            else:
                items = self._push("pickup_area_15m", area, t, ev.get("company"))
                out["pickup_area_15m"].append((area, t, {"pickups_count_15m": len(items),
                                                         "company_distinct_15m": len({c for c in items if c})}))
        elif ev.get("company"):
            t = ev["label_time"]
            items = self._push("company_tips_24h", ev["company"], t, bool(ev["big_tipper"]))
            out["company_tips_24h"].append((ev["company"], t, {"tip_rate_24h": sum(items) / len(items),
                                                               "labels_count_24h": len(items)}))

    def flush(self, out: dict) -> None:
        for name, rows in out.items():
            if rows:
                self.store.write(self.views[name], rows)
                rows.clear()


def measure_python_baseline(cfg, n_events: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"bench-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([cfg.kafka.topic("trips"), cfg.kafka.topic("labels")])
    feats = PythonFeatures(RedisOnlineStore(cfg.redis.url))
    out: dict = defaultdict(list)
    seen, samples = 0, []
    deadline = time.time() + 900
    while seen < n_events and time.time() < deadline:
        for msg in consumer.consume(num_messages=5000, timeout=0.5):
            if msg.error():
                continue
            try:
                ev = json.loads(msg.value())
            except ValueError:
                continue
            feats.handle(msg.topic(), ev, out)
            seen += 1
        feats.flush(out)
        samples.append((time.monotonic(), seen))
    consumer.close()
    return _slope(samples, n_events)


# --- 2. freshness ----------------------------------------------------------------------------------------
def _watch_redis(url: str, keys: list[str], stop, out) -> None:
    """Runs in its own process (no GIL shared with the producer): every change of an entity's event time,
    with the wall time it was first seen."""
    client = redis.Redis.from_url(url)
    last = {k: 0 for k in keys}
    seen = []
    while not stop.is_set():
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "__event_time")
        values = pipe.execute()
        now = time.time() * 1000
        for k, v in zip(keys, values):
            if v is not None and int(v) > last[k]:
                last[k] = int(v)
                seen.append((k, int(v), now))
        time.sleep(0.005)
    out.put(seen)


def measure_freshness(cfg, rate: float, seconds: float, extra_args: tuple[str, ...] = ()) -> list[float]:
    """Produce end events stamped with the wall clock; watch Redis from another process; freshness of an
    event = the first time Redis held its entity at that event time or later, minus the event time."""
    import multiprocessing as mp

    from liveml.online.layout import entity_key

    # the job as users run it: every view, parallelism 2, the default watermark delay
    job_id = submit(cfg, "--parallelism", "2", *extra_args)
    flink.wait_running(cfg, job_id)
    trips = rp.load_trips()
    trips = trips[trips["pickup_community_area"].notna() & (trips["trip_miles"] <= 500) & trips["fare"].notna()]
    areas = sorted({int(a) for a in trips["pickup_community_area"]})
    keys = {a: entity_key("pickup_area_1h", a) for a in areas}
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    watcher = ctx.Process(target=_watch_redis, args=(cfg.redis.url, list(keys.values()), stop, out), daemon=True)
    watcher.start()
    producer = rp.kafka_producer(cfg.kafka.bootstrap_servers)
    rng = np.random.default_rng(3)
    # everything random is drawn up front: the producer loop must stay light, or on 2 cores it steals the
    # CPU the job needs and the figure measures the benchmark instead of the pipeline
    cols = ["pickup_community_area", "fare", "trip_miles", "trip_seconds", "payment_type"]
    records = trips[cols].to_dict("records")
    warmup = int(rate * 10)
    total = int(rate * seconds) + warmup
    picks = rng.integers(len(records), size=total)
    sent: list[tuple[str, int]] = []
    try:
        t0 = time.monotonic()
        for i in range(total):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            row = records[picks[i]]
            now_ms = int(time.time() * 1000)
            area = int(row["pickup_community_area"])
            ev = {"trip_id": f"fresh-{i}", "event_type": "end", "event_time": now_ms, "pickup_community_area": area,
                  "fare": row["fare"], "trip_miles": row["trip_miles"], "trip_seconds": int(row["trip_seconds"]),
                  "payment_type": row["payment_type"]}
            producer.produce(cfg.kafka.topic("trips"), key=ev["trip_id"].encode(), value=json.dumps(ev).encode(),
                             timestamp=now_ms)
            producer.poll(0)
            if i >= warmup:  # the first 10 s warm the job up
                sent.append((keys[area], now_ms))
        producer.flush(10)
        time.sleep(5)
    finally:
        stop.set()
        observed = out.get(timeout=30)
        watcher.join(5)
        cancel(cfg, job_id)
    by_key: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for k, et, wall in observed:
        by_key[k].append((et, wall))
    samples = []
    for k, et in sent:
        for obs_et, wall in by_key[k]:  # in the order they were seen
            if obs_et >= et:
                samples.append(wall - et)
                break
    return samples


# --- 3. online reads -------------------------------------------------------------------------------------
def measure_reads(cfg, n: int = 5000) -> tuple[list[float], list[float]]:
    store = RedisOnlineStore(cfg.redis.url)
    v = get_view("pickup_area_1h")
    store.write(v, [(a, int(time.time() * 1000), {"trips_count_1h": 3, "fare_avg_1h": 9.5, "fare_max_1h": 12.0,
                                                  "trip_miles_avg_1h": 1.5}) for a in range(1, 78)])
    ours, bare = [], []
    client = redis.Redis.from_url(cfg.redis.url)
    from liveml.online.layout import entity_key

    for i in range(n):
        a = 1 + i % 77
        t0 = time.perf_counter()
        store.get(v, [a])
        ours.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        client.hgetall(entity_key(v.name, a))
        bare.append((time.perf_counter() - t0) * 1000)
    return ours, bare


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else float("nan")


# Event-time densities of the resampled trips, in trips per second. The public Chicago taxi data, of which
# the 15,002 real rows are a sample, holds on the order of 100 million trips over 2013-2016: about one a second.
REAL_DENSITY = 1.0
DENSITIES = {"events_per_s": REAL_DENSITY, "events_per_s_10x_density": 10 * REAL_DENSITY,
             "events_per_s_dense": 2000.0}
LABEL_MARGIN_S = 3600  # labels come 15 minutes after their trip; every event time stays in the past


def backlog(n: int, trips_per_s: float) -> list:
    """``n`` events of resampled real trips at ``trips_per_s``, ending now (Kafka refuses record times far in
    the future, and the source dead-letters them)."""
    k = max(1, n // (3 * 15002) + 1)
    span_s = k * 15002 / trips_per_s + LABEL_MARGIN_S
    start_ms = int((time.time() - span_s) * 1000)
    return rp.build_events(amplify_k=k, seed=7, trips_per_s=trips_per_s, start_ms=start_ms)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="backlog size for the throughput runs")
    parser.add_argument("--rate", type=float, default=2000, help="events/s for the freshness run")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--job-arg", action="append", help="extra argument for the feature job (repeatable)")
    parser.add_argument("--only", choices=["throughput", "freshness"], default=None,
                        help="run one part and print it (no JSON written)")
    args = parser.parse_args()
    job_args = tuple(args.job_arg or ())

    base = load_config()
    if args.only is None:
        figures_file(base, NAME)  # a home that cannot take the figures fails now, not after 15 minutes
    launcher.up(base)
    run = f"bench{int(time.time()) % 100000}"
    figures: dict = {}
    if args.only != "freshness":
        print(f"[1/3] throughput on backlogs of {args.events:,} events (resampled real trips), parallelism 2",
              flush=True)
        for i, (key, density) in enumerate(DENSITIES.items()):
            cfg = tenant(base, f"{run}-tp{i}", 5)
            events = backlog(args.events, density)
            rp.replay(events, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix)
            figures[key] = round(measure_flink_throughput(cfg, len(events), job_args), 1)
            print(f"      flink, {density:g} trips/s of event time: {figures[key]:,.0f} events/s", flush=True)
            if density == REAL_DENSITY and args.only is None:
                redis.Redis.from_url(cfg.redis.url).flushdb()
                figures["baseline_events_per_s"] = round(measure_python_baseline(cfg, len(events)), 1)
                print(f"      python consumer baseline, same backlog: {figures['baseline_events_per_s']:,.0f} "
                      "events/s", flush=True)
    if args.only == "throughput":
        return

    print(f"[2/3] freshness at {args.rate:,.0f} events/s for {args.seconds:.0f} s", flush=True)
    fcfg = tenant(base, f"{run}-fresh", 6)
    fresh = measure_freshness(fcfg, args.rate, args.seconds, job_args)
    print(f"      {len(fresh)} samples: p50 {pct(fresh, 50)} ms, p99 {pct(fresh, 99)} ms", flush=True)
    if args.only == "freshness":
        return

    print("[3/3] online reads", flush=True)
    ours, bare = measure_reads(fcfg)
    figures.update({
        "events_per_s_ratio": round(figures["events_per_s"] / figures["baseline_events_per_s"], 3),
        "density_trips_per_s": REAL_DENSITY,
        "freshness_p50_ms": pct(fresh, 50),
        "freshness_p99_ms": pct(fresh, 99),
        "freshness_samples": len(fresh),
        "online_read_p50_ms": pct(ours, 50),
        "online_read_p99_ms": pct(ours, 99),
        "baseline_read_p50_ms": pct(bare, 50),
        "baseline_read_p99_ms": pct(bare, 99),
        "online_read_p50_ratio": round(pct(ours, 50) / pct(bare, 50), 3),
        "backlog_events": args.events,
        "parallelism": 2,
    })
    write_figures(base, NAME, figures)


if __name__ == "__main__":
    main()
