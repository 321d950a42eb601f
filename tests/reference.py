"""An independent computation of the feature views with pandas, over the same real rows the tests replay.

Written from the view semantics (every event of the entity with ``t - window <= t' <= t``), not from the
SQL compiler, so a compiler bug shows up as a mismatch.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

from iceberg_schemas.features import FeatureView
from iceberg_schemas.sources import SOURCES


def valid(events: pd.DataFrame, source: str) -> pd.Series:
    """Rows that pass the source contract: required present, bounds and choices respected."""
    src = SOURCES[source]
    ok = pd.Series(True, index=events.index)
    for f in src.fields:
        col = events[f.name] if f.name in events else pd.Series(np.nan, index=events.index)
        if f.required:
            ok &= col.notna()
        num = pd.to_numeric(col, errors="coerce").astype("float64") if f.type in ("int", "bigint", "double") else None
        if f.min is not None:  # a missing value is not out of bounds (float NaN compares False; pd.NA would not)
            ok &= ~(num < f.min)
        if f.max is not None:
            ok &= ~(num > f.max)
        if f.choices:
            ok &= col.isna() | col.isin(f.choices)
    return ok


def qualifying(events: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    """The events a view aggregates: valid, matching its filter, with an entity."""
    df = events[valid(events, view.source)]
    for name, value in view.only.items():
        df = df[df[name] == value]
    return df[df[view.entity].notna()].copy()


def _last(col: pd.Series, field=None) -> float:
    present = col.dropna()
    return float(present.iloc[-1]) if len(present) else float("nan")


def _units(col: pd.Series, field) -> tuple[list[int], int]:
    """The non-null values as integers of the field's declared precision (fare in cents), and units per 1.

    From the contract, not from the SQL: a value of a field in cents is a whole number of cents."""
    present = col.dropna()
    if field.type in ("int", "bigint"):
        return [int(v) for v in present], 1
    d = 10 ** field.scale
    return [int(np.floor(float(v) * d + 0.5)) for v in present], d


def _exact_sum(win: pd.DataFrame, col: pd.Series, field) -> float:
    units, d = _units(col, field)
    return float(Fraction(sum(units), d)) if units else float("nan")


def _exact_avg(win: pd.DataFrame, col: pd.Series, field) -> float:
    units, d = _units(col, field)
    return float(Fraction(sum(units), len(units) * d)) if units else float("nan")


def _exact_rate(win: pd.DataFrame, col: pd.Series, field=None) -> float:
    present = col.dropna()
    return float(Fraction(int(sum(bool(v) for v in present)), len(present))) if len(present) else float("nan")


# every aggregation of iceberg_schemas.features.AGG_OPS, over the window's rows (in event-time order): the
# exact value from the window's events alone, correctly rounded to a double once (Fraction -> float)
AGGREGATE = {
    "count": lambda win, col, field: len(win),
    "sum": _exact_sum,
    "avg": _exact_avg,
    "min": lambda win, col, field: col.astype(float).min(),
    "max": lambda win, col, field: col.astype(float).max(),
    "last": lambda win, col, field: _last(col),
    "distinct": lambda win, col, field: col.nunique(dropna=True),
    "rate": _exact_rate,
}


def expected_view(events: pd.DataFrame, view: FeatureView, time_col: str, latest_only: bool = False) -> pd.DataFrame:
    """One row per qualifying event (or only each entity's last): the entity, source_id, time, and each
    feature over the window."""
    df = qualifying(events, view)
    w = view.window_s * 1000
    out = []
    for entity, group in df.groupby(view.entity):
        times = group[time_col].to_numpy()
        pairs = list(zip(group.index, times))
        if latest_only:
            last_t = times.max()
            pairs = [p for p in pairs if p[1] == last_t][-1:]
        for idx, t in pairs:
            win = group[(times >= t - w) & (times <= t)]
            row = {view.entity: entity, "source_id": df.at[idx, "trip_id"], "event_time_ms": int(t)}
            for agg, name in zip(view.aggregations, view.feature_names()):
                col = win[agg.source_field] if agg.source_field else None
                field = SOURCES[view.source].field(agg.source_field) if agg.source_field else None
                row[name] = AGGREGATE[agg.op](win, col, field)
            out.append(row)
    return pd.DataFrame(out)


def latest_per_entity(expected: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    return (expected.sort_values("event_time_ms", kind="stable")
            .groupby(view.entity, as_index=False).tail(1).set_index(view.entity))


def first_reason(row: dict, source: str) -> str | None:
    """The DLQ reason the contract gives a parsed event: required, then types, then bounds, in field order."""
    src = SOURCES[source]
    present = {f.name: row.get(f.name) is not None and not (isinstance(row.get(f.name), float)
                                                            and np.isnan(row.get(f.name))) for f in src.fields}
    for f in src.fields:
        if f.required and not present[f.name]:
            return f"missing_field:{f.name}"
    for f in src.fields:
        if not present[f.name]:
            continue
        v = row[f.name]
        if f.min is not None and float(v) < f.min or f.max is not None and float(v) > f.max or \
                f.choices and v not in f.choices:
            return f"absurd_value:{f.name}"
    return None
