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


def ids_in(store, table: str, trip_ids: Sequence[str]) -> int:
    """How many distinct ``trip_ids`` ``table`` (with a ``trip_id`` column) holds."""
    import pyarrow as pa

    con = store.connect()
    store.register(con, table, view="t")
    con.register("wanted", pa.table({"trip_id": list(trip_ids)}))
    return con.execute("SELECT count(DISTINCT t.trip_id) FROM t JOIN wanted USING (trip_id)").fetchone()[0]


def wait_committed(cfg: LivemlConfig, label_ids: Sequence[str], timeout_s: float = 600,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Until ``labels.trips`` holds every one of ``label_ids`` that was not dead-lettered.

    Labels are the last event of a trip (its tip is known 15 minutes after the trip ends), so once they are
    in, so are the trips' start and end events before them. Raises :class:`LivemlError` naming the command
    to check after ``timeout_s`` seconds.
    """
    from liveml.dlq import dead_letters
    from liveml.offline import OfflineStore

    store = OfflineStore.from_config(cfg)
    deadline = time.monotonic() + timeout_s
    while True:
        dlq = dead_letters(cfg)
        labelled = ids_in(store, "labels.trips", label_ids)
        if labelled + dlq.get("labels.dlq", {}).get("count", 0) >= len(label_ids):
            return {"labels_in_iceberg": labelled, "dead_letters": dlq}
        if time.monotonic() > deadline:
            raise LivemlError(f"after {timeout_s:.0f} s labels.trips holds {labelled:,} of the {len(label_ids):,} "
                              "labels sent: is the feature job running (`liveml jobs`, `liveml submit features`)?")
        if log:
            log(f"  in Iceberg: {labelled:,} of {len(label_ids):,} labels")
        time.sleep(5)
