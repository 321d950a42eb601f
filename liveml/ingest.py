"""Waiting for replayed events to be committed to Iceberg by the feature job.

The feature job commits on checkpoints (``flink.checkpoint_interval``), so a replay's events are in
Kafka at once and in the raw and label tables a checkpoint or two later. `liveml replay --wait` and the
demo wait here before a training set is built from them.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from liveml.config import LivemlConfig
from liveml.errors import LivemlError


def _with_ids(store, table: str, trip_ids: Sequence[str], view: str = "t"):
    """A DuckDB connection with ``table`` as ``view`` and the wanted ids as ``wanted(trip_id)``."""
    import pyarrow as pa

    con = store.connect()
    store.register(con, table, view=view)
    con.register("wanted", pa.table({"trip_id": list(trip_ids)}))
    return con


def ids_in(store, table: str, trip_ids: Sequence[str]) -> int:
    """How many distinct ``trip_ids`` ``table`` (with a ``trip_id`` column) holds."""
    con = _with_ids(store, table, trip_ids)
    return con.execute("SELECT count(DISTINCT t.trip_id) FROM t JOIN wanted USING (trip_id)").fetchone()[0]


def predictions_of(store, trip_ids: Sequence[str]):
    """A DuckDB connection where ``p JOIN wanted USING (trip_id)`` is the predictions of ``trip_ids``."""
    return _with_ids(store, "predictions.trips", trip_ids, view="p")


def wait_committed(cfg: LivemlConfig, label_ids: Sequence[str], trip_events: int | None = None,
                   trip_ids: Sequence[str] | None = None, timeout_s: float = 600,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Until ``labels.trips`` holds every one of ``label_ids`` and ``raw.trips`` the ``trip_events`` events of
    ``trip_ids``, less what was dead-lettered.

    The two sources are read and committed independently: labels can be in while the trips' end events are
    still on their way, and a training set built then would leave those labels out (no decision event).
    Raises :class:`LivemlError` naming the command to check after ``timeout_s`` seconds.
    """
    from liveml.dlq import dead_letters
    from liveml.offline import OfflineStore

    store = OfflineStore.from_config(cfg)
    deadline = time.monotonic() + timeout_s
    while True:
        dlq = dead_letters(cfg)
        labelled = ids_in(store, "labels.trips", label_ids)
        raw = trip_rows(store, trip_ids) if trip_ids and trip_events else 0
        labels_in = labelled + dlq.get("labels.dlq", {}).get("count", 0) >= len(label_ids)
        trips_in = not trip_events or raw + dlq.get("trips.dlq", {}).get("count", 0) >= trip_events
        if labels_in and trips_in:
            return {"labels_in_iceberg": labelled, "trip_events_in_iceberg": raw, "dead_letters": dlq}
        if time.monotonic() > deadline:
            raise LivemlError(f"after {timeout_s:.0f} s labels.trips holds {labelled:,} of the {len(label_ids):,} "
                              f"labels sent and raw.trips {raw:,} of {trip_events or 0:,} trip events: is the "
                              "feature job running (`liveml jobs`, `liveml submit features`)?")
        if log:
            log(f"  in Iceberg: {labelled:,} of {len(label_ids):,} labels, {raw:,} of {trip_events or 0:,} trip events")
        time.sleep(5)


def trip_rows(store, trip_ids: Sequence[str]) -> int:
    """Distinct (trip, event type) rows of ``trip_ids`` in ``raw.trips``: a replayed twice event counts once."""
    con = _with_ids(store, "raw.trips", trip_ids)
    return con.execute("SELECT count(*) FROM (SELECT DISTINCT t.trip_id, t.event_type FROM t "
                       "JOIN wanted USING (trip_id))").fetchone()[0]
