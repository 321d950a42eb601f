"""Point-in-time-correct training sets, pinned to Iceberg snapshots.

For every label (one per trip, at its decision time) the builder takes:

- the request-time fields of the event the decision was made on (the trip's ``end`` event);
- for each feature view, the latest feature row of the same entity with ``event_time <= decision_time``,
  and NULL when that row is older than the view's TTL. Nothing after the decision time is ever used. Among
  rows of one event time, the tie rule (``iceberg_schemas.features.LATEST_ORDER``) picks: the latest
  ``computed_at``, then the greatest ``source_id``. So a build is a pure function of its pinned inputs.

It runs in DuckDB: the label, context and feature tables are Parquet files planned by pyiceberg at pinned
snapshots (feature files pruned to the months the labels can reach), joined with ``ASOF LEFT JOIN``.
The labels are cut into decision-time slices (``slice_rows``, 250k by default, at quantiles), and each slice
joins only the context and feature rows it can reach (files pruned by pyiceberg, rows filtered inside the
Parquet scan), so memory follows the slice, not the table. That matters because DuckDB 0.10.3's ASOF join
does not spill: one query over a million labels needed about 1 GB and failed under 512 MB, while the sliced
build ran under 256 MB (bench/training_set.py). Results are written to ``training.<name>`` slice by slice.
Only the spine (each labelled key's latest label: key, decision time, value) is built once for the whole
label table, before slicing, so a key counts once however its label rows fall; for a million labels that
DuckDB temp table took about 130 MB and 2 s here, under a 256 MB limit (it can spill).

Every build records, in the output table's properties, the snapshot id of every input, the feature-spec
version and the row counts (``liveml.lineage.<snapshot id>``), so it can be rebuilt bit for bit.

A label that cannot make a training row is left out, never fatal, and counted with its reason and a few
example keys (``excluded``, ``excluded_examples``), so ``rows + sum(excluded) == labels`` (distinct
labelled keys). The usual case: a trip whose ``end`` event was dead-lettered (an absurd value) or never
arrived still gets its label, but no prediction was ever made on it and its request fields would be NULL:
the curated TFX schema, which requires them, would stop the whole run over that one row.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence

import duckdb
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow

from iceberg_schemas.features import SPEC_VERSION, FeatureView, latest_first
from iceberg_schemas.registry import ensure_table
from iceberg_schemas.training import TIPS, TrainingSetSpec
from liveml.offline import OfflineStore, QueryError, _iso_ms

FEATURE_SOURCES = {"stream": "features", "backfill": "backfill"}
BATCH_ROWS = 250_000
SLICE_ROWS = 250_000
CONTEXT_MARGIN = timedelta(days=1)  # a label's context event is at its decision time; the margin is slack


@dataclass
class Inputs:
    label_table: str
    context_table: str
    feature_tables: dict[str, str]  # view name -> table

    def all(self) -> list[str]:
        return [self.label_table, self.context_table, *self.feature_tables.values()]


def _inputs(spec: TrainingSetSpec, views: Sequence[FeatureView], source: str, label_table: str | None) -> Inputs:
    if source not in FEATURE_SOURCES:
        raise QueryError(f"feature source {source!r} must be one of {sorted(FEATURE_SOURCES)}")
    return Inputs(label_table or spec.label_table, spec.context_table,
                  {v.name: f"{FEATURE_SOURCES[source]}.{v.name}" for v in views})


def resolve_snapshots(store: OfflineStore, inputs: Inputs, as_of_snapshot: int | None = None,
                      snapshot_ids: Mapping[str, int | None] | None = None) -> dict[str, int | None]:
    """The snapshot each input is read at; ``None`` means the table had no commit yet at the pin, and is
    read as empty, never as its current data.

    ``snapshot_ids`` pins each table exactly (a recorded lineage, whose ``null`` is such an empty pin).
    ``as_of_snapshot`` pins the label table, and every other input is read as it stood while that label
    snapshot was current (just before the label table's next commit; now, if it still is current): a
    table whose first commit came later is empty at that pin. Otherwise: current.
    """
    if snapshot_ids:
        missing = [t for t in inputs.all() if t not in snapshot_ids]
        if missing:
            raise QueryError(f"snapshot_ids lacks {missing}; it must name every input: {inputs.all()}")
        return {t: None if snapshot_ids[t] is None else store.resolve_snapshot(store.table(t), snapshot_ids[t])
                for t in inputs.all()}
    labels = store.table(inputs.label_table)
    label_snap = store.resolve_snapshot(labels, as_of_snapshot)
    out: dict[str, int | None] = {inputs.label_table: label_snap}
    at_ms = None
    if as_of_snapshot is not None:  # the world while that label snapshot was the current one
        later = [e.timestamp_ms for e in labels.metadata.snapshot_log
                 if e.timestamp_ms > labels.snapshot_by_id(label_snap).timestamp_ms]
        at_ms = min(later) - 1 if later else None
    for name in inputs.all()[1:]:
        table = store.table(name)
        if at_ms is None:
            out[name] = store.resolve_snapshot(table)
        else:
            log = [e for e in table.metadata.snapshot_log if e.timestamp_ms <= at_ms]
            out[name] = log[-1].snapshot_id if log else None
    return out


EXAMPLE_KEYS = 5  # example keys kept per exclusion reason: enough to look a few up, never a list of millions
EXCLUSION_REASONS = {  # why a labelled key has no training row; the order is the order they are checked in
    "no_decision_time": "none of its label rows has a decision time",
    "no_label": "none of its label rows with a decision time has a value",
    "no_decision_event": "its decision event (the context row) was dead-lettered or never arrived",
}


def _keys(spec: TrainingSetSpec, alias: str = "") -> str:
    return ", ".join(f'{alias}"{k}"' for k in spec.keys)


def _key_value(spec: TrainingSetSpec, alias: str = "") -> str:
    """A key as one value for the examples: the key itself (a trip id), or a struct when there are several."""
    if len(spec.keys) == 1:
        return f'{alias}"{spec.keys[0]}"'
    return "struct_pack(" + ", ".join(f'"{k}" := {alias}"{k}"' for k in spec.keys) + ")"


def spine_sql(spec: TrainingSetSpec) -> str:
    """The spine over the DuckDB view ``labels``: each labelled key's latest label (by ``label_time``) that
    has a decision time and a value.

    Built once for the whole label table, before the time slices, so a key whose label rows fall in two
    slices still makes one row, and the exclusion counts add up over slices."""
    dt, label = spec.decision_time, spec.label
    return f"""SELECT {_keys(spec)}, "{dt}", "{label}" FROM labels
WHERE "{dt}" IS NOT NULL AND "{label}" IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY {_keys(spec)} ORDER BY "{spec.label_time}" DESC, "{label}") = 1"""


def unusable_labels_sql(spec: TrainingSetSpec) -> str:
    """``(reason, count, examples)`` for the labelled keys no row of which can enter the spine: one reason
    per key, ``no_decision_time`` before ``no_label``."""
    dt, label = spec.decision_time, spec.label
    return f"""SELECT reason, count(*), list_slice(list(k ORDER BY k), 1, {EXAMPLE_KEYS}) FROM (
  SELECT {_key_value(spec)} AS k,
         CASE WHEN bool_or("{dt}" IS NOT NULL AND "{label}" IS NOT NULL) THEN NULL
              WHEN bool_or("{dt}" IS NOT NULL) THEN 'no_label' ELSE 'no_decision_time' END AS reason
  FROM labels GROUP BY {_keys(spec)})
WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason"""


def labelled_keys_sql(spec: TrainingSetSpec) -> str:
    """The distinct labelled keys: what the rows and the exclusions add up to. (The label table's schema
    requires the keys; were one NULL, its rows would count as one key here and in the spine alike.)"""
    return f"SELECT count(*) FROM (SELECT DISTINCT {_keys(spec)} FROM labels)"


def _spine_ctes(spec: TrainingSetSpec, spine_where: str) -> str:
    """``spine`` (one slice of the table ``labelled``, from :func:`spine_sql`) and ``ctx`` (each key's
    decision event: its latest ``context_only`` row in the view ``context``)."""
    ctx = ", ".join(f'"{c}"' for c in spec.context_fields)
    ctx_cols = f", {ctx}" if ctx else ""
    only = " AND ".join(f"\"{k}\" IN ('{v}')" for k, v in spec.context_only.items()) or "TRUE"  # _slice_views
    return f"""spine AS (SELECT * FROM labelled WHERE {spine_where}),
ctx AS (
  SELECT {_keys(spec)}{ctx_cols} FROM context WHERE {only}
  QUALIFY row_number() OVER (PARTITION BY {_keys(spec)} ORDER BY "{spec.context_source.time_field}" DESC{ctx_cols}) = 1
)"""


def missing_event_sql(spec: TrainingSetSpec, spine_where: str = "TRUE") -> str:
    """``(count, examples)`` of the slice's labels whose decision event is not in ``context`` (which holds
    the events from ``CONTEXT_MARGIN`` before the slice to its end): it was dead-lettered (the feature job
    sends an invalid event to the DLQ, not to ``raw.trips``) or never arrived. :func:`training_sql` leaves
    the same labels out."""
    on = " AND ".join(f's."{k}" = c."{k}"' for k in spec.keys)
    return f"""WITH {_spine_ctes(spec, spine_where)}
SELECT count(*), list_slice(list({_key_value(spec, 's.')} ORDER BY s."{spec.decision_time}", {_keys(spec, 's.')}),
                            1, {EXAMPLE_KEYS})
FROM spine s LEFT JOIN ctx c ON {on} WHERE c."{spec.keys[0]}" IS NULL"""


def training_sql(spec: TrainingSetSpec, views: Sequence[FeatureView], spine_where: str = "TRUE") -> str:
    """The point-in-time join, over DuckDB relations ``labelled`` (:func:`spine_sql`), ``context`` and
    ``f_<view>``, for the labels ``spine_where`` selects (one time slice of the build).

    A label whose decision event is missing is left out (an inner join): :func:`missing_event_sql`
    counts it."""
    known = set(spec.context_fields) | set(spec.keys)
    for v in views:
        if v.entity not in known:
            raise QueryError(f"view {v.name}: entity {v.entity!r} is not a key or request field of "
                             f"training set {spec.name}")
    selects = [f'b."{k}"' for k in spec.keys] + [f'b."{spec.decision_time}"', f'b."{spec.label}"']
    selects += [f'b."{c}"' for c in spec.context_fields]
    joins = []
    for i, v in enumerate(views):
        alias = f"f{i}"
        for name in v.feature_names():
            selects.append(f'CASE WHEN {alias}.event_time >= b."{spec.decision_time}" - INTERVAL {v.ttl_s} SECOND '
                           f'THEN {alias}."{name}" END AS "{name}"')
        joins.append(f'ASOF LEFT JOIN f_{v.name} {alias} ON b."{v.entity}" = {alias}."{v.entity}" '
                     f'AND b."{spec.decision_time}" >= {alias}.event_time')
    ctx_select = "".join(f', ctx."{c}"' for c in spec.context_fields)
    return f"""
WITH {_spine_ctes(spec, spine_where)},
b AS (SELECT spine.*{ctx_select} FROM spine JOIN ctx USING ({_keys(spec)}))
SELECT {', '.join(selects)}
FROM b
{chr(10).join(joins)}
ORDER BY b."{spec.decision_time}", {_keys(spec, 'b.')}"""


def _slices(con, spec: TrainingSetSpec, lo, hi, n: int, slice_rows: int) -> list[tuple[Any, Any, bool]]:
    """``[(start, end, is_last)]`` covering ``[lo, hi]`` of the spine (``labelled``): half-open, the last
    one closed; ties stay together."""
    if lo is None:
        return []
    k = max(1, math.ceil(n / max(1, slice_rows)))
    cuts = [lo]
    if k > 1:
        qs = ", ".join(f"{i / k:.6f}" for i in range(1, k))
        found = con.execute(f'SELECT quantile_disc("{spec.decision_time}", [{qs}]) FROM labelled').fetchone()[0]
        cuts += [c for c in found if c > lo]
    cuts = sorted(set(cuts))
    bounds = cuts + [hi]
    out = [(bounds[i], bounds[i + 1], False) for i in range(len(cuts) - 1)]
    out.append((cuts[-1], hi, True))
    return out


@dataclass
class Exclusions:
    """Labelled keys left out of a build, by reason, with the first few keys of each to look up."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUSION_REASONS, 0))
    examples: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, reason: str, n: int, examples: Sequence[Any] = ()) -> None:
        self.counts[reason] += int(n)
        kept = self.examples.setdefault(reason, [])
        kept += [_plain(e) for e in examples][:EXAMPLE_KEYS - len(kept)]
        if not kept:
            del self.examples[reason]


def _plain(key: Any) -> Any:
    """A key as the JSON lineage can hold it: times as ISO strings, a struct of keys as a dict."""
    if isinstance(key, dict):
        return {k: _plain(v) for k, v in key.items()}
    return key.isoformat() if hasattr(key, "isoformat") else key


def _count_unusable(con, spec: TrainingSetSpec, excluded: Exclusions) -> int:
    """Count the labelled keys the spine cannot take (no decision time, no value) into ``excluded``;
    returns how many labelled keys there are."""
    for reason, n, examples in con.execute(unusable_labels_sql(spec)).fetchall():
        excluded.add(reason, n, examples)
    return int(con.execute(labelled_keys_sql(spec)).fetchone()[0])


def _batches(reader):
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _slice_views(store: OfflineStore, con, spec: TrainingSetSpec, views: Sequence[FeatureView], inputs: Inputs,
                 snaps: Mapping[str, int | None], a, b, spec_version: int, i: int) -> None:
    """Point ``context`` and ``f_<view>`` at the rows labels in ``[a, b]`` can reach: files pruned by
    pyiceberg, rows filtered by DuckDB inside the Parquet scan. A pin of ``None`` (no commit yet) and a
    range no file survives pruning for are both empty relations (:meth:`OfflineStore.register`)."""
    t = spec.context_source.time_field
    c_lo = (a - CONTEXT_MARGIN).isoformat()
    store.register(con, inputs.context_table, snaps[inputs.context_table],
                   where=f"{t} >= '{c_lo}' and {t} <= '{b.isoformat()}'", view=f"_context_{i}")
    con.execute(f'CREATE OR REPLACE VIEW context AS SELECT * FROM _context_{i} '
                f"WHERE \"{t}\" >= '{c_lo}' AND \"{t}\" <= '{b.isoformat()}'")
    for v in views:
        f_lo = (a - timedelta(seconds=v.ttl_s)).isoformat()
        table = inputs.feature_tables[v.name]
        store.register(con, table, snaps[table], view=f"_{v.name}_{i}",
                       where=f"event_time >= '{f_lo}' and event_time <= '{b.isoformat()}'")
        # one row per (entity, event time), chosen by the tie rule: the ASOF join's pick among equal times
        # would otherwise depend on read order, and rebuilds from one lineage could differ
        con.execute(f'CREATE OR REPLACE VIEW f_{v.name} AS SELECT * FROM "_{v.name}_{i}" '
                    f"WHERE spec_version IN ({int(spec_version)}) AND event_time >= '{f_lo}' "
                    f"AND event_time <= '{b.isoformat()}' "
                    f'QUALIFY row_number() OVER (PARTITION BY "{v.entity}", event_time ORDER BY {latest_first()}) = 1')


def _output_table(store: OfflineStore, spec: TrainingSetSpec, name: str | None) -> str:
    """The identifier of the Iceberg table a build writes (``training.<name>``), created if missing."""
    out_spec = spec.table_spec()
    if name and name != spec.name:
        from iceberg_schemas.tables import TableSpec

        out_spec = TableSpec(out_spec.namespace, name, out_spec.schema, out_spec.partition_spec,
                             out_spec.description, out_spec.properties)
    ensure_table(store.catalog, out_spec)
    return out_spec.identifier


def _slice_batches(con, spec: TrainingSetSpec, views: Sequence[FeatureView], spine_where: str,
                   excluded: Exclusions) -> list:
    """One slice's training rows, after counting its labels that have no decision event."""
    try:
        n, examples = con.execute(missing_event_sql(spec, spine_where)).fetchone()
        excluded.add("no_decision_event", n, examples or ())
        reader = con.execute(training_sql(spec, views, spine_where)).fetch_record_batch(BATCH_ROWS)
        return list(_batches(reader))  # one slice's result: bounded by slice_rows
    except duckdb.OutOfMemoryException as exc:
        raise QueryError(f"the build ran out of DuckDB memory ({str(exc).splitlines()[0]}); give it more "
                         "with --memory-limit, or cut it finer with --slice-rows") from None


def build_training_set(store: OfflineStore, spec: TrainingSetSpec = TIPS, label_table: str | None = None,
                       feature_views: Sequence[FeatureView] | None = None, as_of_snapshot: int | None = None,
                       snapshot_ids: Mapping[str, int] | None = None, name: str | None = None,
                       source: str = "stream", spec_version: int = SPEC_VERSION,
                       progress: Callable[[int], None] | None = None,
                       slice_rows: int = SLICE_ROWS) -> dict[str, Any]:
    """Build ``training.<name>`` point in time correct; returns its lineage (also stored on the table).

    The labels are cut into time slices of about ``slice_rows`` (by decision-time quantiles), and each slice
    joins only the context and feature rows it can reach, so DuckDB's memory follows the slice, not the table.
    Labels that cannot make a row are left out and counted by reason (``excluded``), never fatal: one
    dead-lettered event must not stop training on all the others.
    """
    t0 = time.monotonic()
    views = list(feature_views or spec.feature_views)
    inputs = _inputs(spec, views, source, label_table)
    snaps = resolve_snapshots(store, inputs, as_of_snapshot, snapshot_ids)
    con = store.connect()
    store.register(con, inputs.label_table, snaps[inputs.label_table], view="labels")
    excluded = Exclusions()
    labelled_keys = _count_unusable(con, spec, excluded)
    con.execute(f"CREATE OR REPLACE TEMP TABLE labelled AS {spine_sql(spec)}")
    lo, hi, n_labels = con.execute(f'SELECT min("{spec.decision_time}"), max("{spec.decision_time}"), count(*) '
                                   f"FROM labelled").fetchone()
    slices = _slices(con, spec, lo, hi, n_labels, slice_rows)
    identifier = _output_table(store, spec, name)
    table = store.catalog.load_table(identifier)
    arrow_schema = schema_to_pyarrow(table.schema())

    rows = positives = 0
    first = True
    for i, (a, b, last) in enumerate(slices):
        _slice_views(store, con, spec, views, inputs, snaps, a, b, spec_version, i)
        spine_where = (f"\"{spec.decision_time}\" >= '{a.isoformat()}' AND \"{spec.decision_time}\" "
                       f"{'<=' if last else '<'} '{b.isoformat()}'")
        for batch in _slice_batches(con, spec, views, spine_where, excluded):
            chunk = pa.Table.from_batches([batch]).cast(arrow_schema)
            if first:
                table.overwrite(chunk)
                first = False
            else:
                table.append(chunk)
            rows += chunk.num_rows
            positives += int(pa.compute.sum(chunk.column(spec.label).cast(pa.int64())).as_py() or 0)
            if progress:
                progress(rows)
    if first:  # no training rows: the build is an empty table, still a snapshot of its own
        table.overwrite(arrow_schema.empty_table())
    table = store.catalog.load_table(identifier)
    snap = table.current_snapshot()
    lineage = {
        "table": identifier, "snapshot_id": snap.snapshot_id,
        "snapshot_ids": {k: v for k, v in snaps.items()}, "rows": rows, "positives": positives,
        "labels": labelled_keys, "excluded": dict(excluded.counts), "excluded_examples": dict(excluded.examples),
        "spec_version": spec_version, "training_set": spec.name, "slices": len(slices), "feature_source": source,
        "views": [v.name for v in views], "label": spec.label, "features": spec.feature_columns(),
        "decision_range": [lo.isoformat() if lo else None, hi.isoformat() if hi else None],
        "built_at": _iso_ms(int(time.time() * 1000)), "seconds": round(time.monotonic() - t0, 3),
    }
    encoded = json.dumps(lineage, sort_keys=True)
    table.transaction().set_properties(**{"liveml.lineage": encoded,
                                          f"liveml.lineage.{snap.snapshot_id}": encoded}).commit_transaction()
    return lineage


def features_at(store: OfflineStore, spine: pa.Table, spec: TrainingSetSpec = TIPS,
                feature_views: Sequence[FeatureView] | None = None, source: str = "stream",
                spec_version: int = SPEC_VERSION) -> pa.Table:
    """The model inputs a training set would hold for an arbitrary spine: ``spine`` has ``spec.keys`` and
    ``spec.decision_time`` (e.g. the predictions made: trip id and event time), and each row gets its
    request-time fields and view features by the same point-in-time SQL as a build (:func:`training_sql`),
    read at the tables' current snapshots (recorded in the result's schema metadata,
    ``liveml.snapshot_ids``). Returns keys, decision time, a NULL label column and the feature columns, one
    row per spine row whose decision event is in the context table (the others are left out, as in a
    build). One slice: meant for a monitor's windows, not for a million rows."""
    views = list(feature_views or spec.feature_views)
    inputs = _inputs(spec, views, source, None)
    snaps = {name: store.resolve_snapshot(store.table(name)) for name in inputs.all()[1:]}
    con = store.connect()
    con.register("_spine", spine)
    con.execute(f'CREATE OR REPLACE TEMP TABLE labelled AS SELECT {_keys(spec)}, "{spec.decision_time}", '
                f'CAST(NULL AS BOOLEAN) AS "{spec.label}" FROM _spine WHERE "{spec.decision_time}" IS NOT NULL')
    lo, hi = con.execute(f'SELECT min("{spec.decision_time}"), max("{spec.decision_time}") FROM labelled').fetchone()
    if lo is None:  # no rows: still the right columns (the views read an empty range)
        lo = hi = datetime(1970, 1, 1, tzinfo=timezone.utc)
    _slice_views(store, con, spec, views, inputs, snaps, lo, hi, spec_version, 0)
    out = con.execute(training_sql(spec, views)).arrow()
    return out.replace_schema_metadata({"liveml.snapshot_ids": json.dumps(snaps, sort_keys=True)})


def lineage(store: OfflineStore, table_name: str, snapshot_id: int | None = None) -> dict[str, Any]:
    """The lineage recorded by the build that produced ``snapshot_id`` of a training table (default: current)."""
    table = store.table(table_name)
    snap = store.resolve_snapshot(table, snapshot_id)
    raw = table.properties.get(f"liveml.lineage.{snap}")
    if raw is None:
        raise QueryError(f"{table_name} snapshot {snap} has no recorded lineage: it was not written by "
                         "`liveml training-set build`")
    return json.loads(raw)
