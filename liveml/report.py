"""`liveml report`: how the loop's models are doing, as one self-contained HTML file.

Every figure is read through the offline store (:class:`liveml.offline.OfflineStore`, DuckDB over the
tables' current snapshots), the path ``liveml sql`` takes, so a section's numbers are the numbers its SQL
gives there; each section shows the SQL it ran. Sections, in the spirit of Evidently's drift and quality
reports but per model version and event-time window:

- quality per version over time, realised beside estimated (``monitoring.quality``);
- drift per feature with its threshold, and the largest skew shares (``monitoring.drift``);
- feature freshness and prediction latency (``predictions.trips``);
- the dead-letter share (the ``*.dlq`` Kafka topics, :mod:`liveml.dlq`);
- label delays and the unlabelled share (``monitoring.outcomes``);
- the controller's decisions (``monitoring.decisions``, once the controller writes it).

A missing or empty table makes its section say so; an unreachable Kafka makes the DLQ section say so; any
other failure of one section is shown in that section. None of them stops the report.
Section builders live in :mod:`liveml.report_sections`; plots and HTML in :mod:`liveml.report_html`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from liveml.offline import OfflineStore, parse_time

OK, NO_DATA, UNAVAILABLE, ERROR = "ok", "no_data", "unavailable", "error"
PLOTTED_METRICS = ("log_loss", "auc")
# time buckets for the per-prediction figures: the smallest of these that gives at most MAX_BUCKETS
NICE_BUCKETS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
MAX_BUCKETS = 60


@dataclass
class KeyTable:
    """A section's key numbers: ``rows`` of ``{column: value}``, rendered as ``<table id=id>`` whose cells
    carry ``data-col`` and the exact value in ``data-value`` (for tests and scrapers)."""
    id: str
    caption: str
    columns: list[str]
    rows: list[dict[str, Any]]


@dataclass
class Plot:
    png: bytes
    alt: str


@dataclass
class Section:
    id: str
    title: str
    what: str
    status: str = OK  # ok | no_data | unavailable | error
    note: str | None = None
    sql: list[tuple[str, str]] = field(default_factory=list)  # (what it reads, statement), in order run
    tables: list[KeyTable] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


@dataclass
class Report:
    generated_at: datetime
    since: datetime | None
    until: datetime | None
    sections: list[Section]

    def summary(self) -> dict[str, Any]:
        """The ``--json`` shape: ``{"generated_at", "since", "until", "sections": {id: {"status", "note",
        "tables": {table id: [row, ...]}}}}``."""
        def iso(t):
            return t.isoformat() if t is not None else None

        return {"generated_at": iso(self.generated_at), "since": iso(self.since), "until": iso(self.until),
                "sections": {s.id: {"title": s.title, "status": s.status, "note": s.note,
                                    "tables": {t.id: [_plain_row(r) for r in t.rows] for t in s.tables}}
                             for s in self.sections}}


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


class NoData(Exception):
    """A section has nothing to show yet: the message says which table is missing or empty."""


class Unavailable(Exception):
    """A section's source cannot be reached (Kafka down): the message says which and how to bring it up."""


class Reader:
    """The report's one way to the tables: ``store.sql`` (as ``liveml sql``), every statement recorded in
    the section that ran it, with the report's event-time range as SQL conditions."""

    def __init__(self, store: OfflineStore, since: datetime | None = None, until: datetime | None = None):
        self.store = store
        self.since, self.until = since, until
        self.known = set(store.table_names())

    def has(self, table: str) -> bool:
        return table in self.known

    def require(self, table: str, writer: str) -> None:
        if not self.has(table):
            raise NoData(f"no data yet: there is no table {table} ({writer} writes it; "
                         "`liveml tables create` creates the declared tables)")

    def query(self, section: Section, what: str, statement: str) -> pd.DataFrame:
        statement = statement.strip()
        section.sql.append((what, statement))
        return self.store.sql(statement).to_pandas()

    def points(self, col: str) -> list[str]:
        """Conditions keeping rows whose ``col`` lies in [since, until)."""
        out = []
        if self.since:
            out.append(f"{col} >= {sql_time(self.since)}")
        if self.until:
            out.append(f"{col} < {sql_time(self.until)}")
        return out

    def windows(self) -> list[str]:
        """Conditions keeping windows [window_start, window_end) that overlap [since, until)."""
        out = []
        if self.since:
            out.append(f"window_end > {sql_time(self.since)}")
        if self.until:
            out.append(f"window_start < {sql_time(self.until)}")
        return out


def sql_time(t: datetime) -> str:
    return f"TIMESTAMPTZ '{t.astimezone(timezone.utc).isoformat()}'"


def where(conditions: list[str]) -> str:
    return f"\nWHERE {' AND '.join(conditions)}" if conditions else ""


def latest_computation(table: str, keys: list[str], conditions: list[str]) -> str:
    """Rows of a monitoring table, the latest ``computed_at`` of each key: the monitor recomputes a window
    as its labels arrive and appends, so older computations of a window stay in the table."""
    return (f"SELECT * FROM {table}{where(conditions)}\n"
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY computed_at DESC NULLS LAST) = 1")


def bucket_seconds(span_s: float) -> int:
    """The time bucket for a span of ``span_s`` seconds: the smallest of :data:`NICE_BUCKETS_S` giving at
    most :data:`MAX_BUCKETS` buckets (the largest one past that)."""
    for b in NICE_BUCKETS_S:
        if span_s / b <= MAX_BUCKETS:
            return b
    return NICE_BUCKETS_S[-1]


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values (None for NULL/NaN, datetimes for timestamps)."""
    out = []
    for row in df.astype(object).where(df.notna(), None).to_dict("records"):
        out.append({k: (v.to_pydatetime() if isinstance(v, pd.Timestamp) else
                        v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


def build_report(store: OfflineStore, cfg=None, since: str | datetime | int | None = None,
                 until: str | datetime | int | None = None,
                 dead_letters: Callable[[], dict[str, Any]] | None = None,
                 progress: Callable[[str], None] | None = None) -> Report:
    """Read every section's figures and draw its plots.

    ``since``/``until``: an event-time range (:data:`liveml.offline.TIME_SPELLINGS`; windows that overlap
    it, predictions and outcomes whose event/decision time is in it); the DLQ counts cover whole topics.
    ``dead_letters``: ``() -> {topic: {"count", "reasons", ...}}`` as :func:`liveml.dlq.dead_letters`
    returns (default: that, on ``cfg``'s Kafka, after a port check). Raises only
    :class:`liveml.offline.QueryError` for an unreadable ``since``/``until``.
    """
    from liveml import report_sections as rs

    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    reader = Reader(store, start, end)
    say = progress or (lambda _m: None)
    sections: list[Section] = []

    def run(section: Section, fill: Callable[[Section], Any]) -> Any:
        say(f"{section.title}")
        result = None
        try:
            result = fill(section)
        except NoData as exc:
            section.status, section.note = NO_DATA, str(exc)
        except Unavailable as exc:
            section.status, section.note = UNAVAILABLE, str(exc)
        except Exception as exc:  # one broken source never costs the others their sections
            section.status, section.note = ERROR, f"{type(exc).__name__}: {exc}"
        sections.append(section)
        return result

    decisions_section = rs.new_section("decisions")
    decisions = run(decisions_section, lambda s: rs.decisions(reader, s))
    sections.pop()  # read first (the quality plots mark the decisions), shown last
    run(rs.new_section("quality"), lambda s: rs.quality(reader, s, decisions))
    run(rs.new_section("drift"), lambda s: rs.drift(reader, s))
    run(rs.new_section("skew"), lambda s: rs.skew(reader, s))
    run(rs.new_section("freshness"), lambda s: rs.freshness(reader, s))
    run(rs.new_section("latency"), lambda s: rs.latency(reader, s))
    run(rs.new_section("dlq"), lambda s: rs.dlq(reader, s, dead_letters or rs.kafka_dead_letters(cfg)))
    run(rs.new_section("label_delay"), lambda s: rs.label_delays(reader, s))
    sections.append(decisions_section)
    return Report(datetime.now(timezone.utc), start, end, sections)


def write_report(report: Report, path: str | Path) -> Path:
    """Write ``report`` as one HTML file (plots inside as base64 PNG); returns the path."""
    from liveml.report_html import render

    from liveml.config import made_dir

    path = Path(path)
    made_dir(path.parent)
    part = path.with_name(path.name + ".part")
    part.write_text(render(report), encoding="utf-8")
    part.replace(path)
    return path
