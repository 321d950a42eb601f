"""Stream/batch parity: the rows the stream wrote against the rows a backfill recomputed, key by key.

Rows pair up on (entity, source event id, event time). Where one side holds that key more than once (a
job that replayed events), its row is chosen by the tie rule (``iceberg_schemas.features.LATEST_ORDER``: the
latest ``computed_at``), as the training set and the Redis writer choose it, and the extra rows are counted
as ``stream_duplicates`` / ``backfill_duplicates``, never hidden. A mismatch is a row on one side only, or a
feature that differs at all. The tolerance is zero, for every
op: a window's aggregates are a function of its events alone (``flink_jobs.feature_sql.agg_expr`` sums
integers, and divides once), so the stream and the backfill agree bit for bit however long the stream ran.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from iceberg_schemas.features import SPEC_VERSION, FeatureView, latest_first
from iceberg_schemas.tables import backfill_table, feature_table
from liveml.offline import CURRENT, OfflineStore, parse_time, to_ms

REL_TOL = 0.0  # see the module docstring: kept as a name so reports can state it


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def compare_view(store: OfflineStore, con, v: FeatureView, lo_ms: int | None, hi_ms: int | None,
                 spec_version: int, examples: int, snapshots: dict[str, int] | None = None) -> dict[str, Any]:
    pins = snapshots or {}
    stream, batch = feature_table(v).identifier, backfill_table(v).identifier
    store.register(con, stream, pins.get(stream, CURRENT), view=f"s_{v.name}")
    store.register(con, batch, pins.get(batch, CURRENT), view=f"b_{v.name}")
    empty = []
    if lo_ms is None or hi_ms is None:  # the event range both sides cover: none if one side has no rows
        ranges = {}
        for alias, table in (("s", stream), ("b", batch)):
            ranges[alias] = con.execute(f"SELECT epoch_ms(min(event_time)), epoch_ms(max(event_time)) FROM "
                                        f"{alias}_{v.name} WHERE spec_version = {spec_version}").fetchone()
            if ranges[alias][0] is None:
                empty.append(table)
        if not empty:
            lo_ms = max(ranges["s"][0], ranges["b"][0]) if lo_ms is None else lo_ms
            hi_ms = min(ranges["s"][1], ranges["b"][1]) if hi_ms is None else hi_ms
    if lo_ms is None or hi_ms is None:
        note = (f"{' and '.join(empty)} {'has' if len(empty) == 1 else 'have'} no rows of spec version "
                f"{spec_version}, so no range is covered by both" + (
                    f": `liveml backfill --views {v.name}` writes {batch}" if batch in empty else ""))
        return {"view": v.name, "from": None, "to": None, "compared": 0, "mismatches": 0, "stream_only": 0,
                "backfill_only": 0, "value_mismatches": 0, "stream_duplicates": 0, "backfill_duplicates": 0,
                "examples": [], "note": note}
    key = [f'"{v.entity}"', "source_id", "event_time"]
    names = v.feature_names()
    side = ", ".join(f'"{n}"' for n in names)

    def ranked(alias: str) -> str:
        return (f"SELECT {', '.join(key)}, {side}, row_number() OVER (PARTITION BY {', '.join(key)} "
                f"ORDER BY {latest_first()}) AS _n FROM {alias}_{v.name} WHERE spec_version = {spec_version} "
                f"AND epoch_ms(event_time) BETWEEN {lo_ms} AND {hi_ms}")

    def rows(alias: str) -> str:
        return f"SELECT * FROM ({ranked(alias)}) WHERE _n = 1"

    dupes = [con.execute(f"SELECT count(*) FROM ({ranked(a)}) WHERE _n > 1").fetchone()[0] for a in ("s", "b")]

    diffs = [f's."{n}" IS DISTINCT FROM b."{n}"' for n in names]
    on = " AND ".join(f"s.{k} = b.{k}" for k in [*key, "_n"])
    con.execute(f"""CREATE OR REPLACE TEMP TABLE p_{v.name} AS
        SELECT coalesce(s."{v.entity}", b."{v.entity}") AS entity, coalesce(s.source_id, b.source_id) AS source_id,
               coalesce(s.event_time, b.event_time) AS event_time,
               b._n IS NULL AS stream_only, s._n IS NULL AS backfill_only,
               (s._n IS NOT NULL AND b._n IS NOT NULL AND ({' OR '.join(diffs)})) AS value_mismatch,
               {', '.join(f's."{n}" AS "stream_{n}", b."{n}" AS "backfill_{n}"' for n in names)}
        FROM ({rows('s')}) s FULL OUTER JOIN ({rows('b')}) b ON {on}""")
    compared, stream_only, backfill_only, values = con.execute(
        f"SELECT count(*), count(*) FILTER (stream_only), count(*) FILTER (backfill_only), "
        f"count(*) FILTER (value_mismatch) FROM p_{v.name}").fetchone()
    bad = con.execute(f"SELECT * FROM p_{v.name} WHERE stream_only OR backfill_only OR value_mismatch "
                      f"ORDER BY event_time LIMIT {int(examples)}").arrow().to_pylist()
    for row in bad:
        row["event_time"] = row["event_time"].isoformat()
    return {"view": v.name, "from": _iso(lo_ms), "to": _iso(hi_ms), "compared": int(compared),
            "mismatches": int(stream_only + backfill_only + values), "stream_only": int(stream_only),
            "backfill_only": int(backfill_only), "value_mismatches": int(values),
            "stream_duplicates": int(dupes[0]), "backfill_duplicates": int(dupes[1]), "examples": bad}


def parity(store: OfflineStore, views: Sequence[FeatureView], start: str | None = None, end: str | None = None,
           spec_version: int = SPEC_VERSION, examples: int = 5,
           snapshots: dict[str, int] | None = None) -> dict[str, Any]:
    """Compare ``features.<view>`` with ``backfill.<view>`` over ``[start, end]`` (default: the event range
    both sides cover, per view), each at its current snapshot or the one ``snapshots`` names."""
    lo = to_ms(parse_time(start)) if start else None
    hi = to_ms(parse_time(end)) if end else None
    con = store.connect()
    per_view = [compare_view(store, con, v, lo, hi, spec_version, examples, snapshots) for v in views]
    return {"compared": sum(r["compared"] for r in per_view), "mismatches": sum(r["mismatches"] for r in per_view),
            "tolerance": REL_TOL, "spec_version": spec_version, "views": per_view}
