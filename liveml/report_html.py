"""The plots (matplotlib, Agg) and the HTML of `liveml report`: one file, no script, no external URL.

Plots are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, so no global figure state and no
display) and embedded as base64 PNG. Each key-number table cell carries ``data-col`` and the exact value
in ``data-value`` (``data-null`` for NULL), so a test or a scraper reads the numbers without parsing text.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime
from typing import Any, Sequence

import pandas as pd
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from liveml.report import Plot, Report, Section

DPI = 90
MAX_PANELS = 12
COLLAPSE_ROWS = 12  # a longer key table is folded under <details>


# --- plots ---------------------------------------------------------------------------------------------
def _png(fig: Figure, alt: str) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return Plot(buf.getvalue(), alt)


def _t(values) -> pd.Series:
    """Times as naive UTC datetimes, which matplotlib's date axis takes as they are."""
    return pd.to_datetime(pd.Series(values), utc=True).dt.tz_convert(None).reset_index(drop=True)


def _date_axis(ax) -> None:
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _grid(n: int, ncols: int, width: float = 5.2, height: float = 2.8) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _version(name, version, label) -> str:
    shown = f"{name} v{version}" if not pd.isna(version) else f"{name} (no version)"
    return shown + (f" ({label})" if isinstance(label, str) else "")


def quality_plot(rows: pd.DataFrame, metric: str, specs: Sequence[str], decisions: pd.DataFrame | None) -> Plot:
    """``rows``: one metric's quality rows; a panel per window spec, a colour per version and label,
    realised solid, estimated dashed; ``decisions`` (``_time``, ``_text``) as vertical lines."""
    specs = [w for w in specs if (rows["window"] == w).any()][:2]
    fig, axes = _grid(len(specs), 2, width=6.5, height=3.4)
    for ax, spec in zip(axes, specs):
        part = rows[rows["window"] == spec]
        groups = part.groupby(["model_name", "model_version", "model_label"], dropna=False, sort=True)
        for i, ((name, version, label), sel) in enumerate(groups):
            colour, who = f"C{i % 10}", _version(name, version, label)
            x = _t(sel["window_end"])
            ax.plot(x, sel["realised"].astype(float).to_numpy(), "-o", ms=3, color=colour, label=f"{who} realised")
            ax.plot(x, sel["estimated"].astype(float).to_numpy(), "--", color=colour, alpha=0.8,
                    label=f"{who} estimated")
        if decisions is not None and not decisions.empty:
            for when, text in zip(_t(decisions["_time"]), decisions["_text"]):
                ax.axvline(when, color="0.3", lw=0.8, ls=":")
                ax.annotate(str(text)[:24], (when, 1), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize=7, color="0.3")
        ax.set_title(f"{metric} per {spec} window")
        ax.set_ylabel(metric)
        _date_axis(ax)
        ax.legend(fontsize=7, loc="best")
    return _png(fig, f"{metric} per window, realised and estimated, per model version")


def drift_plot(df: pd.DataFrame, spec: str) -> Plot:
    """A panel per feature (at most :data:`MAX_PANELS`): distance per version over time, the threshold
    dashed, windows over it in red."""
    features = sorted(df["feature"].unique())[:MAX_PANELS]
    fig, axes = _grid(len(features), 3, width=4.4, height=2.6)
    for ax, feature in zip(axes, features):
        part = df[df["feature"] == feature]
        for i, ((name, version, stat), sel) in enumerate(part.groupby(["model_name", "model_version", "statistic"],
                                                                       dropna=False)):
            x = _t(sel["window_end"])
            ax.plot(x, sel["distance"].astype(float).to_numpy(), "-", color=f"C{i % 10}", lw=1.2,
                    label=f"v{version} {stat}")
            ax.step(x, sel["threshold"].astype(float).to_numpy(), where="post", color=f"C{i % 10}", ls="--", lw=0.9)
            over = sel["drifted"].fillna(False).astype(bool).to_numpy()
            ax.plot(x[over], sel["distance"].astype(float).to_numpy()[over], "o", color="red", ms=3)
        ax.set_title(feature, fontsize=9)
        _date_axis(ax)
        ax.legend(fontsize=6)
    fig.suptitle(f"Drift distance per feature ({spec} windows); dashed: threshold")
    return _png(fig, "drift distance per feature with its threshold")


def bar_plot(df: pd.DataFrame, label_col: str, value_col: str, xlabel: str, title: str) -> Plot:
    df = df.head(20)
    fig = Figure(figsize=(7, 0.35 * len(df) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(df[label_col].astype(str).to_numpy()[::-1], df[value_col].astype(float).fillna(0).to_numpy()[::-1])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _png(fig, title)


def percentile_plot(df: pd.DataFrame, group_col: str, cols: Sequence[str], ylabel: str, title: str) -> Plot:
    groups = sorted(df[group_col].astype(str).unique())[:MAX_PANELS]
    fig, axes = _grid(len(groups), 2, width=6, height=2.8)
    for ax, group in zip(axes, groups):
        part = df[df[group_col].astype(str) == group]
        x = _t(part["bucket"])
        for col in cols:
            ax.plot(x, part[col].astype(float).to_numpy(), "-o", ms=2, label=col)
        ax.set_title(group if len(groups) > 1 else title, fontsize=9)
        ax.set_ylabel(ylabel)
        _date_axis(ax)
        ax.legend(fontsize=7)
    if len(groups) > 1:
        fig.suptitle(title)
    return _png(fig, title)


def status_plot(per_bucket: pd.DataFrame, title: str) -> Plot:
    fig = Figure(figsize=(7, 2.8), layout="constrained")
    ax = fig.subplots()
    ax.stackplot(_t(per_bucket["bucket"]), per_bucket["ok"].astype(float), per_bucket["not_ok"].astype(float),
                 labels=["ok", "not ok"], colors=["C2", "C3"], alpha=0.8)
    ax.set_ylabel("predictions")
    ax.set_title(title)
    _date_axis(ax)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig, title)


def histogram_plot(hist: pd.DataFrame, width: float, limit: float | None) -> Plot:
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    ax.bar(hist["bin_start_s"].astype(float), hist["labelled"].astype(float), width=width, align="edge",
           color="C0", edgecolor="white")
    if limit is not None:
        ax.axvline(limit, color="C3", ls="--", label=f"maximum label delay ({limit:g} s)")
        ax.legend(fontsize=7)
    ax.set_xlabel("label delay (s)")
    ax.set_ylabel("labelled predictions")
    ax.set_title("Label delay distribution")
    return _png(fig, "label delay histogram")


# --- HTML ----------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
.meta{color:#666} .what{color:#444;max-width:900px} .note{background:#fff7e0;padding:8px;border-left:4px solid #e0a800}
.status{font-size:80%;padding:1px 6px;border-radius:8px;color:#fff}
.status.ok{background:#2a8a3e} .status.no_data{background:#888} .status.unavailable{background:#c77c00}
.status.error{background:#c0392b}
table{border-collapse:collapse;margin:8px 0;font-size:85%} th,td{border:1px solid #ddd;padding:3px 8px}
th{background:#f3f3f3;text-align:left} td{white-space:nowrap} .scroll{overflow-x:auto}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:8px 0} pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:80%}
caption{text-align:left;font-weight:600;padding:4px 0}
"""


def _value(v: Any) -> tuple[str, str | None, bool]:
    """(shown text, data-value, numeric) of one cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", None, False
    if isinstance(v, bool):
        return str(v).lower(), str(v).lower(), False
    if isinstance(v, int):
        return f"{v:,}", str(v), True
    if isinstance(v, float):
        shown = f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.4g}"
        return shown, repr(v), True
    if isinstance(v, datetime):
        utc = v.utcoffset() is not None and not v.utcoffset()
        shown = v.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + "Z" if utc else v.isoformat(sep=" ")
        return shown, v.isoformat(), False
    return str(v), str(v), False


def _table_html(table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for c in table.columns:
            shown, value, numeric = _value(row.get(c))
            attrs = f' data-col="{esc(c)}"' + (' data-null="1"' if value is None else f' data-value="{esc(value)}"')
            cells.append(f'<td{attrs}{" class=num" if numeric else ""}>{esc(shown)}</td>')
        body.append(f'<tr data-row="{i}">{"".join(cells)}</tr>')
    out = (f'<div class="scroll"><table id="{esc(table.id)}" data-table="{esc(table.id)}" '
           f'data-rows="{len(table.rows)}">'
           f"<caption>{esc(table.caption)}</caption><thead><tr>{head}</tr></thead>"
           f"<tbody>{''.join(body)}</tbody></table></div>")
    if len(table.rows) > COLLAPSE_ROWS:
        out = f"<details><summary>{esc(table.caption)} ({len(table.rows)} rows)</summary>{out}</details>"
    return out


def _section_html(s: Section) -> str:
    esc = html.escape
    parts = [f'<section id="sec-{esc(s.id)}" data-section="{esc(s.id)}" data-status="{esc(s.status)}">',
             f'<h2>{esc(s.title)} <span class="status {esc(s.status)}">{esc(s.status.replace("_", " "))}</span></h2>',
             f'<p class="what">{esc(s.what)}</p>']
    if s.note:
        parts.append(f'<p class="note" data-note="{esc(s.id)}">{esc(s.note)}</p>')
    for p in s.plots:
        parts.append(f'<img alt="{esc(p.alt)}" src="data:image/png;base64,{base64.b64encode(p.png).decode()}">')
    parts.extend(_table_html(t) for t in s.tables)
    if s.sql:
        queries = "".join(f'<p>{esc(what)}</p><pre class="sql" data-sql="{i}">{esc(stmt)}</pre>'
                          for i, (what, stmt) in enumerate(s.sql))
        parts.append(f"<details class=\"sql\"><summary>SQL ({len(s.sql)} quer{'y' if len(s.sql) == 1 else 'ies'}; "
                     f"each runs unchanged as <code>liveml sql \"...\"</code>)</summary>{queries}</details>")
    parts.append("</section>")
    return "\n".join(parts)


def render(report: Report) -> str:
    """The whole report as one HTML document."""
    esc = html.escape
    span = (f"{report.since.isoformat() if report.since else 'the start'} to "
            f"{report.until.isoformat() if report.until else 'now'}")
    toc = "".join(f'<li><a href="#sec-{esc(s.id)}">{esc(s.title)}</a> '
                  f'<span class="status {esc(s.status)}">{esc(s.status.replace("_", " "))}</span></li>'
                  for s in report.sections)
    body = "\n".join(_section_html(s) for s in report.sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>liveml report</title><style>{CSS}</style></head>
<body>
<h1>liveml report</h1>
<p class="meta" id="report-meta" data-generated-at="{esc(report.generated_at.isoformat())}">generated
{esc(report.generated_at.isoformat(timespec="seconds"))}; event time from {esc(span)}; tables read at their
current snapshots (as <code>liveml sql</code> reads them)</p>
<ul id="toc">{toc}</ul>
{body}
</body></html>
"""
