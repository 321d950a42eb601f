"""The one Python function the feature job runs in Flink's Python workers; everything else is SQL in the JVM.

* :class:`RedisUpsert`, a vectorized (pandas) UDF: each Arrow batch of feature rows becomes one pipelined
  Redis round trip, coalesced to the latest row per entity. It returns before the batch is acknowledged,
  so a checkpoint (which waits for in-flight batches) never passes rows Redis has not received.
"""

from __future__ import annotations

import time

import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import ScalarFunction, udf

from iceberg_schemas.features import FeatureView, view as get_view


class RedisUpsert(ScalarFunction):
    def __init__(self, redis_url: str, view_name: str):
        self.redis_url = redis_url
        self.view_name = view_name

    def open(self, function_context) -> None:
        from liveml.online.redis import RedisOnlineStore

        self.view: FeatureView = get_view(self.view_name)
        self.store = RedisOnlineStore(self.redis_url)
        group = function_context.get_metric_group().add_group("liveml").add_group("view", self.view_name)
        self.rows_in = group.counter("online_rows")
        self.writes = group.counter("online_writes")
        self.stale = group.counter("online_stale_skipped")
        self.write_ms = group.distribution("online_write_ms")
        self.lag_ms = group.distribution("online_event_lag_ms")
        # a distribution reaches Prometheus as a constant 0 (Flink's reporter exports numbers only), so
        # freshness is read from this gauge: the newest event time written so far, epoch ms (0 before the
        # first batch); Prometheus's time() minus it is the age of the freshest feature row of the view
        self.newest_event_ms = 0
        group.gauge("online_newest_event_ms", lambda: self.newest_event_ms)

    def eval(self, entity: pd.Series, event_ms: pd.Series, source_id: pd.Series, *features: pd.Series) -> pd.Series:
        names = self.view.feature_names()
        frame = pd.DataFrame({n: f for n, f in zip(names, features)})
        values = frame.astype(object).where(frame.notna(), None).to_dict("records")
        # computed now (the write time), with the event's id: the tie rule's order key (LATEST_ORDER)
        n = len(values)
        rows = list(zip(entity.tolist(), event_ms.astype("int64").tolist(), values, [None] * n, source_id.tolist()))
        t0 = time.monotonic()
        written = self.store.write(self.view, rows)
        took = (time.monotonic() - t0) * 1000
        self.rows_in.inc(len(rows))
        self.writes.inc(written)
        self.stale.inc(len({str(e) for e in entity}) - written)
        self.write_ms.update(int(took))
        newest = int(event_ms.max())
        self.newest_event_ms = max(self.newest_event_ms, newest)
        self.lag_ms.update(max(0, int(time.time() * 1000 - newest)))
        return pd.Series([1] * len(rows), dtype="int64")


def redis_upsert_udf(redis_url: str, view_name: str):
    return udf(RedisUpsert(redis_url, view_name), result_type=DataTypes.BIGINT(), func_type="pandas")

