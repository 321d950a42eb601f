"""The offline store: Iceberg tables read with pyiceberg, time travel, and SQL through DuckDB.

``OfflineStore`` is the Python API behind ``liveml query``, ``liveml sql`` and ``liveml tables history``::

    from liveml.config import load_config
    from liveml.offline import OfflineStore

    store = OfflineStore.from_config(load_config())
    arrow = store.scan("raw.trips", where="fare > 20", columns=["trip_id", "fare"], as_of="2026-11-26T10:00:00Z")
    df = store.sql("SELECT company, avg(fare) FROM raw.trips GROUP BY 1").to_pandas()

Scans go through pyiceberg, so filters prune partitions and Parquet row groups. SQL runs in DuckDB over
the data files pyiceberg plans for the pinned snapshot (``read_parquet``), so a query streams from disk
and spills past memory instead of materialising whole tables. Our tables are append-only (no delete
files); a table that has delete files is read through pyiceberg's Arrow scan instead, which applies them.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse as parse_filter
from pyiceberg.expressions.visitors import bind
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import DataScan, Table

from liveml.config import LivemlConfig, made_dir
from liveml.errors import LivemlError


class QueryError(LivemlError):
    """A query names something that does not exist, or is malformed, or would write."""

    exit_code = 6


TIME_SPELLINGS = ("an ISO-8601 date or date-time, with Z, an offset such as +01:00, or no zone (read as UTC): "
                  "2015-03-02, 2015-03-02T08:05:00Z, 2015-03-02 08:05:00.250+01:00; or epoch milliseconds: "
                  "1425283500000")
_EPOCH_MS = re.compile(r"^-?\d{10,}$")  # ISO-8601's basic date (20150302) has 8 digits


def parse_time(value: str | datetime | date | int) -> datetime:
    """The one parser of every time the platform takes: ``--as-of``, ``--from``/``--to``, and the time
    literals of a scan's filter. Returns an aware datetime in UTC.

    Spellings (:data:`TIME_SPELLINGS`): ISO-8601 as Python 3.11's ``datetime.fromisoformat`` reads it
    (``Z`` included), a date as its midnight UTC, a time without a zone as UTC; an int or a string of ten
    or more digits as epoch milliseconds. Raises :class:`QueryError` naming the spellings otherwise.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, int) or (isinstance(value, str) and _EPOCH_MS.match(value.strip())):
        return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise QueryError(f"time {value!r} is not a time the platform reads; use {TIME_SPELLINGS}") from None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


class _CurrentSchemaScan(DataScan):
    """A pyiceberg scan projected through the table's current schema, whatever snapshot it reads.

    pyiceberg 0.6.1 projects a pinned snapshot through the schema it was committed with, so a column added
    since is unknown to it ("Could not find column"), while DuckDB's reads (:meth:`OfflineStore.register`)
    show it as NULL. Reading by field id through the current schema gives NULL for a field a file lacks,
    and a filter on it is evaluated as on NULL."""

    def projection(self) -> Schema:
        schema = self.table.schema()
        return schema if "*" in self.selected_fields else schema.select(*self.selected_fields,
                                                                         case_sensitive=self.case_sensitive)


CURRENT = "current"  # read a table's current snapshot (None, as a pin, is the empty table before its first commit)


class OfflineStore:
    def __init__(self, catalog: Catalog, tmp_dir: str | Path | None = None, memory_limit: str | None = None):
        self.catalog = catalog
        self.tmp_dir = Path(tmp_dir) if tmp_dir else None
        self.memory_limit = memory_limit

    @classmethod
    def from_config(cls, cfg: LivemlConfig, memory_limit: str | None = None) -> "OfflineStore":
        from liveml.catalog import open_catalog

        return cls(open_catalog(cfg), cfg.home_dir("tmp", "duckdb"), memory_limit)

    # --- tables and snapshots ----------------------------------------------------------------------
    def table_names(self) -> list[str]:
        return sorted(".".join(ident) for ns in self.catalog.list_namespaces() for ident in self.catalog.list_tables(ns))

    def table(self, name: str) -> Table:
        if name.count(".") != 1:
            raise QueryError(f"table {name!r} must be namespace.table; known: {', '.join(self.table_names())}")
        try:
            return self.catalog.load_table(name)
        except NoSuchTableError:
            raise QueryError(f"no table {name!r}; known: {', '.join(self.table_names()) or 'none'} "
                             "(`liveml tables create` creates the declared ones)") from None

    def resolve_snapshot(self, table: Table, snapshot_id: int | None = None,
                         as_of: str | datetime | int | None = None) -> int | None:
        """The snapshot to read: the given id, the one current at ``as_of``, or the current one (None if empty)."""
        name = ".".join(table.identifier[-2:])
        if snapshot_id is not None and as_of is not None:
            raise QueryError("give --snapshot or --as-of, not both")
        if snapshot_id is not None:
            if table.snapshot_by_id(int(snapshot_id)) is None:
                recent = [s.snapshot_id for s in table.metadata.snapshots[-3:]]
                raise QueryError(f"table {name} has no snapshot {snapshot_id}; recent ones: {recent} "
                                 f"(`liveml tables history {name}`)")
            return int(snapshot_id)
        if as_of is not None:
            at_ms = to_ms(parse_time(as_of))
            log = [e for e in table.metadata.snapshot_log if e.timestamp_ms <= at_ms]
            if not log:
                first = table.metadata.snapshot_log[0].timestamp_ms if table.metadata.snapshot_log else None
                since = f"its first snapshot is at {_iso_ms(first)}" if first else "it has no snapshots"
                raise QueryError(f"table {name} had no snapshot at {_iso_ms(at_ms)}; {since}")
            return log[-1].snapshot_id
        snap = table.current_snapshot()
        return snap.snapshot_id if snap else None

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every snapshot in commit order: id, parent, time, operation, rows added and total."""
        table = self.table(name)
        current = table.current_snapshot()
        rows = []
        for snap in table.metadata.snapshots:
            extra = snap.summary.additional_properties if snap.summary else {}
            rows.append({
                "snapshot_id": snap.snapshot_id, "parent_id": snap.parent_snapshot_id,
                "time": _iso_ms(snap.timestamp_ms), "timestamp_ms": snap.timestamp_ms,
                "operation": snap.summary.operation.value if snap.summary else None,
                "added_rows": int(extra.get("added-records", 0)), "total_rows": int(extra.get("total-records", 0)),
                "added_files": int(extra.get("added-data-files", 0)),
                "current": current is not None and snap.snapshot_id == current.snapshot_id,
            })
        return sorted(rows, key=lambda r: r["timestamp_ms"])

    # --- scans ---------------------------------------------------------------------------------------
    def _filter(self, table: Table, where: str | BooleanExpression | None) -> BooleanExpression:
        if where is None or where == "":
            return AlwaysTrue()
        if isinstance(where, str):
            try:
                expr = parse_filter(where)
            except Exception as exc:  # pyparsing's ParseException: keep only where it broke
                col = getattr(exc, "col", None)
                raise QueryError(f"malformed filter {where!r}" + (f" near column {col}" if col else "") +
                                 "; write comparisons such as \"fare > 20 and company = 'Flash Cab'\"") from None
        else:
            expr = where
        expr = _literals_in(expr, table.schema())
        try:
            bind(table.schema(), expr, case_sensitive=True)
        except (ValueError, TypeError) as exc:  # TypeError: a literal the column's type cannot take
            raise QueryError(f"filter {where!r} does not fit {'.'.join(table.identifier[-2:])}: {exc}; "
                             f"columns: {', '.join(f'{f.name} ({f.field_type})' for f in table.schema().fields)}") from None
        return expr

    def _columns(self, table: Table, columns: Sequence[str] | None) -> tuple[str, ...]:
        names = [f.name for f in table.schema().fields]
        if not columns:
            return ("*",)
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise QueryError(f"no column {', '.join(map(repr, unknown))} in {'.'.join(table.identifier[-2:])}; "
                             f"columns: {', '.join(names)}")
        return tuple(columns)

    def scan(self, name: str, where: str | BooleanExpression | None = None, columns: Sequence[str] | None = None,
             snapshot_id: int | None = None, as_of: str | datetime | int | None = None,
             limit: int | None = None) -> pa.Table:
        """Rows of ``name`` as Arrow, through pyiceberg (filter pushed down to partitions and files).

        Columns are the table's current schema whatever snapshot is read, as in :meth:`register` (so
        ``liveml query`` and ``liveml sql`` agree): a column added after the snapshot reads as NULL, as
        it does in files written before it was added. Times in ``where`` take :data:`TIME_SPELLINGS`.
        """
        table = self.table(name)
        row_filter = self._filter(table, where)
        selected = self._columns(table, columns)
        snap = self.resolve_snapshot(table, snapshot_id, as_of)
        schema = schema_to_pyarrow(table.schema())
        wanted = [f.name for f in schema] if selected == ("*",) else list(selected)
        schema = pa.schema([schema.field(c) for c in wanted])
        if snap is None:
            return schema.empty_table()
        scan = _CurrentSchemaScan(table=table, row_filter=row_filter, selected_fields=selected, snapshot_id=snap,
                                  limit=limit)
        return scan.to_arrow().select(wanted)

    def scan_pandas(self, name: str, **kwargs: Any):
        return self.scan(name, **kwargs).to_pandas()

    def data_files(self, table: Table, snapshot_id: int | None,
                   where: str | BooleanExpression | None = None) -> list[str] | None:
        """The Parquet files of the snapshot that can hold rows matching ``where`` (partition and metrics
        pruning by pyiceberg), or None when delete files mean the files alone are not the table."""
        if snapshot_id is None:
            return []
        tasks = list(_CurrentSchemaScan(table=table, row_filter=self._filter(table, where),
                                        snapshot_id=snapshot_id).plan_files())
        if any(t.delete_files for t in tasks):
            return None
        return [_local(t.file.file_path) for t in tasks]

    # --- DuckDB --------------------------------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        if self.memory_limit:
            con.execute(f"SET memory_limit = '{self.memory_limit}'")
        if self.tmp_dir:
            made_dir(self.tmp_dir)
            con.execute(f"SET temp_directory = '{self.tmp_dir}'")
        return con

    def register(self, con: duckdb.DuckDBPyConnection, name: str, snapshot_id: int | None | str = CURRENT,
                 where: str | BooleanExpression | None = None, view: str | None = None) -> int | None:
        """Make ``name`` a DuckDB view; returns the snapshot read.

        ``snapshot_id``: :data:`CURRENT` (the default) reads the current snapshot; an id reads that one;
        ``None`` is a pin to "before the table's first commit", which reads as empty: a pinned read never
        falls through to the current data. The view is ``namespace.table`` in DuckDB too (a schema per
        namespace), unless ``view`` names it. ``where`` prunes the files read; rows are not filtered by it
        (put the predicate in the query). The columns are the table's current schema (see :meth:`scan`).
        """
        table = self.table(name)
        snap = self.resolve_snapshot(table) if snapshot_id == CURRENT else (
            None if snapshot_id is None else self.resolve_snapshot(table, snapshot_id))
        namespace, short = name.split(".")
        if view is None:
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
            target = f'"{namespace}"."{short}"'
        else:
            target = f'"{view}"'
        files = self.data_files(table, snap, where)
        names = ", ".join(f'"{f.name}"' for f in table.schema().fields)
        if files is None:  # delete files present: pyiceberg applies them, DuckDB gets a table of its own
            arrow = _CurrentSchemaScan(table=table, row_filter=self._filter(table, where), snapshot_id=snap).to_arrow()
            src = f"_arrow_{namespace}_{short}_{abs(hash(target))}"
            con.register(src, arrow)
            # never a view over the Arrow table: DuckDB 0.10.3's Arrow scan fails ("DatetimeType not
            # recognized in ConvertTimestampUnit") when a timestamptz filter is pushed into it
            con.execute(f'CREATE OR REPLACE TEMP TABLE "{src}_t" AS SELECT * FROM {src}')
            con.unregister(src)
            con.execute(f'CREATE OR REPLACE VIEW {target} AS SELECT {names} FROM "{src}_t"')
            return snap
        # The table's schema as an empty Parquet file, read with the data files by name: an empty or fully
        # pruned snapshot is then an empty relation of the right types through the same Parquet reader, and
        # a column added by evolution after a file was written reads as NULL in it
        paths = [*files, self._schema_file(table)]
        file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in paths) + "]"
        # Iceberg's data files hold every column; DuckDB's hive-partition detection would instead read a
        # `model_version=1/` directory as a VARCHAR column that shadows the file's own BIGINT
        scan = f"read_parquet({file_list}, union_by_name = true, hive_partitioning = false)"
        con.execute(f"CREATE OR REPLACE VIEW {target} AS SELECT {names} FROM {scan}")
        return snap

    def _schema_file(self, table: Table) -> str:
        """An empty Parquet file with ``table``'s current schema (written once per schema)."""
        import hashlib
        import tempfile

        import pyarrow.parquet as pq

        schema = schema_to_pyarrow(table.schema())
        digest = hashlib.sha1(schema.serialize().to_pybytes()).hexdigest()[:16]
        folder = (self.tmp_dir or Path(tempfile.gettempdir()) / "liveml-duckdb") / "schemas"
        path = folder / f"{digest}.parquet"
        if not path.exists():
            made_dir(folder)
            part = path.with_suffix(f".{os.getpid()}.tmp")
            pq.write_table(schema.empty_table(), part)
            os.replace(part, path)
        return str(path)

    def sql(self, query: str, snapshots: Mapping[str, int] | None = None) -> pa.Table:
        """Run a read-only SQL query; ``namespace.table`` names resolve to catalog tables (current snapshot,
        or the one given in ``snapshots``)."""
        check_read_only(query)
        con = self.connect()
        known = self.table_names()
        used = referenced_tables(query, known)
        for name in (snapshots or {}):
            if name not in known:
                raise QueryError(f"no table {name!r}; known: {', '.join(known)}")
        for name in used:
            self.register(con, name, (snapshots or {}).get(name, CURRENT))
        try:
            return con.execute(query).arrow()
        except duckdb.Error as exc:
            hint = "" if used else f" (tables: {', '.join(known)})"
            raise QueryError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}{hint}") from None


_READ_ONLY = {"SELECT", "EXPLAIN"}


def check_read_only(query: str) -> None:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise QueryError("no SQL statement given")
    for stmt in statements:
        kind = str(stmt.type).rsplit(".", 1)[-1]
        if kind not in _READ_ONLY:
            raise QueryError(f"liveml sql is read-only: a {kind} statement is refused. Tables are written by the "
                             "pipelines (`liveml submit`, `liveml backfill`, `liveml training-set build`).")


def referenced_tables(query: str, known: Iterable[str]) -> list[str]:
    """Catalog tables named in ``query`` as ``ns.table`` (optionally double-quoted parts)."""
    used = []
    for name in known:
        ns, short = name.split(".")
        pattern = rf'(?<![\w."]){_ident(ns)}\s*\.\s*{_ident(short)}(?![\w"])'
        if re.search(pattern, query, flags=re.IGNORECASE):
            used.append(name)
    return used


def _local(path: str) -> str:
    """``file:///x`` (how Iceberg records local files) as the plain path DuckDB opens; other schemes unchanged."""
    if path.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(path).path)
    return path


def _ident(part: str) -> str:
    return rf'(?:{re.escape(part)}|"{re.escape(part)}")'


def _literals_in(expr: BooleanExpression, schema) -> BooleanExpression:
    """``expr`` with its literals read the way the column's type means them, where pyiceberg would not:

    - on a timestamp or date column, a string or an integer goes through :func:`parse_time` (so ``Z``,
      offsets, dates and epoch milliseconds all work) and is written the way pyiceberg's conversion takes it;
    - on an integer column, a decimal is compared as a number, as SQL does (pyiceberg 0.6.1 truncated it:
      ``area = 8.5`` matched area 8): ``= 8.5`` is false, ``< 8.5`` is ``<= 8``, ``> 8.5`` is ``>= 9``,
      ``!= 8.5`` is ``is not null``; ``in``/``not in`` keep their whole values.
    """
    import decimal
    import math

    from pyiceberg.expressions import (AlwaysFalse, And, EqualTo, GreaterThan, GreaterThanOrEqual, In, LessThan,
                                       LessThanOrEqual, LiteralPredicate, Not, NotEqualTo, NotIn, NotNull, Or,
                                       SetPredicate)
    from pyiceberg.expressions.literals import LongLiteral, StringLiteral, literal
    from pyiceberg.types import DateType, IntegerType, LongType, TimestampType, TimestamptzType

    def kind_of(term):
        try:
            return schema.find_field(term.name).field_type
        except (ValueError, AttributeError):
            return None  # an unknown column: bind() says so

    def fix_time(kind, lit):
        if not isinstance(lit, (StringLiteral, LongLiteral)):
            return lit
        t = parse_time(int(lit.value) if isinstance(lit, LongLiteral) else lit.value)
        if isinstance(kind, DateType):
            return literal(t.date().isoformat())
        if isinstance(kind, TimestampType):
            return literal(t.replace(tzinfo=None).isoformat())
        return literal(t.isoformat())

    def number(lit):
        try:
            return decimal.Decimal(str(lit.value))
        except (decimal.InvalidOperation, ValueError):
            return None

    if isinstance(expr, (And, Or)):
        return type(expr)(_literals_in(expr.left, schema), _literals_in(expr.right, schema))
    if isinstance(expr, Not):
        return Not(_literals_in(expr.child, schema))
    if not isinstance(expr, (LiteralPredicate, SetPredicate)):
        return expr
    kind = kind_of(expr.term)
    if isinstance(kind, (DateType, TimestampType, TimestamptzType)):
        if isinstance(expr, LiteralPredicate):
            return type(expr)(expr.term, fix_time(kind, expr.literal))
        return type(expr)(expr.term, {fix_time(kind, lit) for lit in expr.literals})
    if not isinstance(kind, (IntegerType, LongType)):
        return expr
    if isinstance(expr, SetPredicate):
        values = [number(lit) for lit in expr.literals]
        if any(v is None for v in values) or all(v == v.to_integral_value() for v in values):
            return expr
        whole = {int(v) for v in values if v == v.to_integral_value()}
        if whole:
            return type(expr)(expr.term, whole)
        return AlwaysFalse() if isinstance(expr, In) else NotNull(expr.term)
    value = number(expr.literal)
    if value is None or value == value.to_integral_value() or isinstance(expr.literal, StringLiteral):
        return expr
    if isinstance(expr, EqualTo):
        return AlwaysFalse()
    if isinstance(expr, NotEqualTo):
        return NotNull(expr.term)
    if isinstance(expr, (LessThan, LessThanOrEqual)):
        return LessThanOrEqual(expr.term, math.floor(value))
    if isinstance(expr, (GreaterThan, GreaterThanOrEqual)):
        return GreaterThanOrEqual(expr.term, math.ceil(value))
    return expr
