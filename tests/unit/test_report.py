"""`liveml report` over a real pyiceberg catalog of real trips: the HTML renders in headless Chromium, and the
numbers it shows equal `liveml sql` over the same tables, scikit-learn and numpy on the rows themselves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from flink_jobs import replay as rp
from flink_jobs.enrich import Assembled, Outcome, prediction_row
from iceberg_schemas.features import FEATURE_VIEWS
from liveml.quality import estimated, realised
from tests.conftest import run_cli
from tests.offline_fixtures import append, cli_catalog, create

pytestmark = pytest.mark.unit

T0 = datetime(2015, 3, 2, 6, 0, tzinfo=timezone.utc)
N_TRIPS = 1500  # one every 8 s of event time: 3 h 20 min, four 1 h windows
MAX_DELAY_S = 2400
WINDOWS = {"1h": (3600, 3600), "2h/1h": (7200, 3600)}
COMPUTED = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
MONITORING = ("monitoring.quality", "monitoring.drift", "monitoring.outcomes", "predictions.trips", "raw.trips")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def trips_frame(n: int = N_TRIPS) -> pd.DataFrame:
    """The first real trips, paced one every 8 s from T0 (a replay's compression of event time)."""
    trips = rp.load_trips().head(n).reset_index(drop=True)
    trips["start_ms"] = int(T0.timestamp() * 1000) + np.arange(len(trips)) * 8000
    trips["trip_seconds"] = trips["trip_seconds"].clip(upper=3600)
    return trips


def fill(catalog, n: int = N_TRIPS) -> dict[str, pd.DataFrame]:
    """raw.trips, predictions.trips, monitoring.outcomes, .quality and .drift from the real trips with
    deterministic scores (a logistic model of payment type and fare, v2 a canary on every fifth trip)."""
    trips = trips_frame(n)
    raw, labels = rp.trip_tables(trips)
    for t in MONITORING:
        create(catalog, t)
    append(catalog, "raw.trips", raw.astype(object).where(raw.notna(), None).to_dict("records"))

    i = np.arange(len(labels))
    card = (trips["payment_type"] == "Credit Card").to_numpy()
    fare = trips["fare"].fillna(0).to_numpy(float)
    version = np.where(i % 5 == 0, 2, 1)
    score = np.where(version == 1, _sigmoid(-2.5 + 3.2 * card + 0.02 * fare), _sigmoid(-2.0 + 2.5 * card))
    status = np.where(i % 40 == 7, "timeout", "ok")
    latency = np.round(3 + (i * 37 % 100) / 10 + np.where(i % 97 == 0, 180, 0), 3)
    decision = labels["decision_time"]
    preds = []
    for k in range(len(labels)):
        ok = status[k] == "ok"
        views = {v.name: ({"status": "missing", "event_time_ms": None, "age_s": None} if k % 23 == 0 else
                          {"status": "ok", "event_time_ms": 0, "age_s": float((k * (13 + j)) % (600 * (j + 1)))})
                 for j, v in enumerate(FEATURE_VIEWS)}
        row = prediction_row({"trip_id": labels["trip_id"][k], "event_time": int(decision[k].timestamp() * 1000)},
                             Assembled({}, views), Outcome(status[k], float(score[k]) if ok else None,
                                                           int(version[k])), "tips",
                             "canary" if version[k] == 2 else "stable", float(latency[k]), 0)
        row["event_time"] = decision[k].to_pydatetime()
        row["predicted_at"] = COMPUTED
        preds.append(row)
    append(catalog, "predictions.trips", preds)
    delay = 900.0 + (i * 97 % 2000)  # 15 min to 48 min: some come after the 40 min maximum
    labelled = delay <= MAX_DELAY_S
    label = labels["big_tipper"].to_numpy(bool)
    outcomes = pd.DataFrame({
        "trip_id": labels["trip_id"], "decision_time": decision, "model_name": "tips", "model_version": version,
        "model_label": np.where(version == 2, "canary", "stable"), "status": status,
        "score": np.where(status == "ok", score, np.nan), "outcome": np.where(labelled, "labelled", "unlabelled"),
        "label": np.where(labelled, label.astype(float), np.nan),
        "label_delay_s": np.where(labelled, delay, np.nan), "labels_seen": np.where(labelled, 1, 0),
        "max_label_delay_s": MAX_DELAY_S})
    outcomes["label_time"] = [d + timedelta(seconds=float(s)) if ok else None
                              for d, s, ok in zip(decision, delay, labelled)]
    append(catalog, "monitoring.outcomes", outcomes.astype(object).where(outcomes.notna(), None).to_dict("records"))
    append(catalog, "monitoring.quality", quality_rows(outcomes))
    append(catalog, "monitoring.drift", drift_rows())
    return {"raw": raw, "labels": labels, "outcomes": outcomes, "predictions": pd.DataFrame(preds)}


def window_starts(size: int, slide: int):
    first = int(T0.timestamp()) // slide * slide - size + slide
    last = int((T0 + timedelta(seconds=N_TRIPS * 8 + 3600)).timestamp())
    return [datetime.fromtimestamp(s, tz=timezone.utc) for s in range(first, last, slide)]


def quality_rows(outcomes: pd.DataFrame) -> list[dict]:
    """liveml.quality's figures per window spec, window, version; the last windows also hold a stale
    computation from before their labels (realised None), which the report must not show."""
    rows = []
    scored = outcomes[outcomes["status"] == "ok"]
    for spec, (size, slide) in WINDOWS.items():
        for start in window_starts(size, slide):
            end = start + timedelta(seconds=size)
            in_window = scored[(scored["decision_time"] >= start) & (scored["decision_time"] < end)]
            for v, part in in_window.groupby("model_version"):
                lab = part[part["outcome"] == "labelled"]
                real, est = realised(lab["score"], lab["label"].astype(bool)), estimated(part["score"])
                for when, stale in ((COMPUTED - timedelta(hours=1), True), (COMPUTED, False)):
                    for metric in ("count", "log_loss", "auc", "brier"):
                        rows.append({"window_start": start, "window_end": end, "window": spec, "model_name": "tips",
                                     "model_version": int(v), "model_label": "canary" if v == 2 else "stable",
                                     "metric": metric, "estimated": est.get(metric),
                                     "realised": None if stale else real.get(metric), "n_scored": len(part),
                                     "n_labelled": 0 if stale else len(lab), "decision_threshold": 0.5,
                                     "labels_complete": not stale, "computed_at": when})
    return rows


def drift_rows() -> list[dict]:
    rows = []
    for k, start in enumerate(window_starts(3600, 3600)):
        for v in (1, 2):
            for feature, stat, dist, thr in (("fare", "jensen_shannon", 0.02 + 0.04 * k, 0.1),
                                             ("payment_type", "linf", 0.05, 0.2),
                                             ("score", "jensen_shannon", 0.01 * k, 0.1),
                                             ("company", "share_differ", 0.01 * (k + 1) * v, None),
                                             ("trip_miles", "share_differ", 0.002 * k, None),
                                             ("trip_miles", "mean_abs_diff", 1.5, None),
                                             ("company", "linf", 0.03 * k, 0.1)):
                kind = "skew" if stat in ("share_differ", "mean_abs_diff") or feature == "company" else "drift"
                rows.append({"window_start": start, "window_end": start + timedelta(hours=1), "window": "1h",
                             "model_name": "tips", "model_version": v, "kind": kind, "feature": feature,
                             "statistic": stat, "distance": dist, "threshold": thr,
                             "drifted": None if thr is None else dist > thr, "n": 100, "computed_at": COMPUTED})
    return rows


def chromium(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is missing: `make setup` installs it (Debian's chromium)")
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=timeout)


def key_table(doc, table_id: str) -> list[dict]:
    """A key table as the browser built it: [{column: exact value or None}, ...]."""
    table = doc.get_element_by_id(table_id)
    return [{td.get("data-col"): (None if td.get("data-null") else td.get("data-value")) for td in tr.iter("td")}
            for tr in table.iter("tr") if tr.get("data-row") is not None]


def sql(config: Path, statement: str) -> list[dict]:
    return json.loads(run_cli(config, "sql", statement, "--json").stdout)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    config, catalog = cli_catalog(tmp)
    frames = fill(catalog)
    out = tmp / "report.html"
    summary = json.loads(run_cli(config, "report", "--out", str(out), "--json").stdout)
    return config, out, summary, frames, tmp


def test_report_renders_in_chromium_and_its_numbers_equal_liveml_sql(filled):
    import lxml.html
    from PIL import Image

    config, out, summary, frames, tmp = filled
    assert summary["out"] == str(out)
    status = {k: s["status"] for k, s in summary["sections"].items()}
    assert status == {"quality": "ok", "drift": "ok", "skew": "ok", "freshness": "ok", "latency": "ok",
                      "dlq": "unavailable", "label_delay": "ok", "decisions": "no_data"}, summary
    assert "Kafka is not reachable" in summary["sections"]["dlq"]["note"]
    text = out.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    assert text.count('src="data:image/png;base64,') >= 7

    shot = tmp / "report.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280) and pixels.std() > 20, pixels.std()  # not blank: text and plots
    assert (pixels < 128).mean() > 0.01

    dom = chromium("--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    doc = lxml.html.fromstring(dom.stdout)

    # realised log loss of each version's latest 1 h window: liveml sql (latest computation) and sklearn
    shown = {int(r["model_version"]): float(r["log_loss_realised"]) for r in key_table(doc, "quality-latest")
             if r["window"] == "1h"}
    by_sql = sql(config, """SELECT model_version, max_by(realised, computed_at) AS realised, max(window_start) AS ws
        FROM monitoring.quality WHERE metric = 'log_loss' AND "window" = '1h'
          AND window_start = (SELECT max(window_start) FROM monitoring.quality WHERE "window" = '1h')
        GROUP BY model_version""")
    assert shown == {r["model_version"]: r["realised"] for r in by_sql} and set(shown) == {1, 2}
    o = frames["outcomes"]
    start = pd.Timestamp(by_sql[0]["ws"])
    win = o[(o["decision_time"] >= start) & (o["decision_time"] < start + pd.Timedelta(hours=1)) &
            (o["outcome"] == "labelled") & (o["status"] == "ok")]
    for v, part in win.groupby("model_version"):
        assert shown[v] == pytest.approx(log_loss(part["label"], part["score"], labels=[0, 1]), abs=1e-12)
    auc = {int(r["model_version"]): float(r["auc_realised"]) for r in key_table(doc, "quality-latest")
           if r["window"] == "1h"}
    for v, part in win.groupby("model_version"):
        assert auc[v] == pytest.approx(roc_auc_score(part["label"], part["score"]), abs=1e-12)

    # p99 latency: liveml sql and numpy's linear percentile over the rows written
    p99 = float(key_table(doc, "latency-summary")[0]["p99_ms"])
    assert p99 == sql(config, "SELECT quantile_cont(latency_ms, 0.99) AS p FROM predictions.trips")[0]["p"]
    assert p99 == pytest.approx(np.percentile(frames["predictions"]["latency_ms"], 99), abs=1e-9)
    statuses = {r["status"]: int(r["predictions"]) for r in key_table(doc, "latency-status")}
    assert statuses == frames["predictions"]["status"].value_counts().to_dict()

    # unlabelled share and delay percentiles
    delays = key_table(doc, "label-delay-summary")[0]
    assert float(delays["unlabelled_share"]) == sql(config, "SELECT avg(CASE WHEN outcome = 'unlabelled' THEN 1.0 "
                                                            "ELSE 0.0 END) AS s FROM monitoring.outcomes")[0]["s"]
    assert float(delays["unlabelled_share"]) == pytest.approx((o["outcome"] == "unlabelled").mean(), abs=1e-12)
    assert float(delays["p95_delay_s"]) == pytest.approx(o["label_delay_s"].dropna().quantile(0.95), abs=1e-9)

    # freshness per view, drift and skew against the rows written
    ages = {r["view"]: r for r in key_table(doc, "freshness-summary")}
    assert set(ages) == {v.name for v in FEATURE_VIEWS}
    for v in FEATURE_VIEWS:
        written = frames["predictions"]["feature_ages"].map(lambda s: json.loads(s)[v.name]["age_s"]).dropna()
        assert float(ages[v.name]["p95_s"]) == pytest.approx(np.percentile(written, 95), abs=1e-9)
    fare = next(r for r in key_table(doc, "drift-summary") if r["feature"] == "fare" and r["model_version"] == "1")
    assert float(fare["max_distance"]) == sql(config, "SELECT max(distance) AS d FROM monitoring.drift "
                                                      "WHERE feature = 'fare' AND model_version = 1")[0]["d"]
    assert int(fare["windows_over"]) == sum(1 for r in drift_rows()
                                            if r["feature"] == "fare" and r["model_version"] == 1 and r["drifted"])
    largest = key_table(doc, "skew-largest")  # shares only: trip_miles' mean_abs_diff of 1.5 is no share
    assert [(r["feature"], r["model_version"]) for r in largest][:2] == [("company", "2"), ("company", "1")]
    assert {r["statistic"] for r in largest} == {"share_differ"}
    company = next(r for r in key_table(doc, "skew-comparators") if r["model_version"] == "1")
    assert (company["statistic"], int(company["windows_over"])) == ("linf", 1)  # 0.03 * 4 > 0.1

    # every statement shown runs unchanged through `liveml sql`
    shown_sql = [pre.text_content() for pre in doc.xpath('//section[@id="sec-latency"]//pre[@data-sql]')]
    by_status = next(q for q in shown_sql if "coalesce(status, 'null')" in q)
    assert {r["status"]: r["predictions"] for r in sql(config, by_status)} == statuses
    assert "no data yet" in doc.get_element_by_id("sec-decisions").text_content()


@pytest.mark.parametrize("create_tables", [True, False])
def test_empty_or_missing_tables_give_no_data_sections_not_a_crash(tmp_path, create_tables):
    config, catalog = cli_catalog(tmp_path)
    if create_tables:
        for t in MONITORING:
            create(catalog, t)
    out = tmp_path / "empty.html"
    summary = json.loads(run_cli(config, "report", "--out", str(out), "--json").stdout)
    status = {k: s["status"] for k, s in summary["sections"].items()}
    assert status == {**dict.fromkeys(status, "no_data"), "dlq": "unavailable"}, summary
    text = out.read_text()
    assert text.count("no data yet") >= 7
    if not create_tables:
        assert "there is no table monitoring.quality" in text


def test_time_range_dead_letters_and_decisions_on_the_timeline(filled):
    """--since/--until keep the windows and predictions in range; the DLQ share is dead / (dead + raw
    rows); decisions from a monitoring.decisions table show as rows and on the quality timeline."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

    from liveml.catalog import open_catalog
    from liveml.config import load_config
    from liveml.offline import OfflineStore
    from liveml import report_sections as rs
    from liveml.report import Reader, build_report, write_report

    config, _, _, frames, tmp = filled
    catalog = open_catalog(load_config(config, env={}))
    store = OfflineStore(catalog, tmp / "duck")
    since, until = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    dead = {"trips.dlq": {"count": 30, "reasons": {"malformed_json": 20, "missing_field": 10}, "examples": []}}
    before = build_report(store, since=since.isoformat(), until=until.isoformat(), dead_letters=lambda: dead)
    quality = before.sections[0]
    assert quality.id == "quality" and quality.status == "ok"
    assert {r["window_start"] for r in quality.tables[0].rows} == {since}  # the latest window starting before until
    assert any("TIMESTAMPTZ '2015-03-02T07:00:00+00:00'" in q for _, q in quality.sql)
    latency = next(s for s in before.sections if s.id == "latency")
    p = frames["predictions"]
    in_range = p[(p["event_time"] >= since) & (p["event_time"] < until)]
    assert latency.tables[0].rows[0]["predictions"] == len(in_range)
    dlq = next(s for s in before.sections if s.id == "dlq")
    trips_row = next(r for r in dlq.tables[0].rows if r["topic"] == "trips.dlq")
    assert trips_row["accepted"] == len(frames["raw"])
    assert trips_row["dlq_share"] == pytest.approx(30 / (30 + len(frames["raw"])))
    assert "malformed_json: 20" in trips_row["reasons"]

    catalog.create_table("monitoring.decisions", Schema(
        NestedField(1, "decided_at", TimestamptzType(), required=True), NestedField(2, "action", StringType()),
        NestedField(3, "model_version", LongType()), NestedField(4, "reason", StringType())))
    append(catalog, "monitoring.decisions", [
        {"decided_at": T0 + timedelta(minutes=80), "action": "promote", "model_version": 2, "reason": "canary wins"},
        {"decided_at": T0 + timedelta(minutes=150), "action": "rollback", "model_version": 2, "reason": "auc drop"}])
    after = build_report(store, dead_letters=lambda: dead)
    decisions = next(s for s in after.sections if s.id == "decisions")
    assert decisions.status == "ok" and [r["action"] for r in decisions.tables[0].rows] == ["promote", "rollback"]
    reader = Reader(store)
    marked, unmarked = rs.new_section("quality"), rs.new_section("quality")
    rs.quality(reader, marked, rs.decisions(reader, rs.new_section("decisions")))
    rs.quality(reader, unmarked, None)
    assert marked.plots[0].png == after.sections[0].plots[0].png != unmarked.plots[0].png  # the lines are drawn
    later = rs.decisions(Reader(store, since=until), rs.new_section("decisions"))
    assert list(later["action"]) == ["rollback"]
    page = write_report(after, tmp / "decisions.html").read_text()
    assert 'id="decisions-list"' in page and 'data-status="ok"' in page


def test_one_window_and_malformed_rows_draw_every_section_without_a_warning(tmp_path):
    """Three trips (one window, one bucket, one delay bin) and predictions whose feature_ages is not JSON,
    not an object, or missing, with no status or latency: every section draws, nothing warns."""
    from liveml.offline import OfflineStore
    from liveml.report import build_report

    _, catalog = cli_catalog(tmp_path)
    fill(catalog, n=3)
    append(catalog, "predictions.trips", [
        {"trip_id": "bad-1", "event_time": T0, "feature_ages": "not json", "status": None, "latency_ms": None},
        {"trip_id": "bad-2", "event_time": T0, "feature_ages": "[1, 2]", "status": "invalid", "latency_ms": 1.0},
        {"trip_id": "bad-3", "event_time": T0, "feature_ages": None}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        report = build_report(OfflineStore(catalog, tmp_path / "duck"), dead_letters=lambda: {})
    status = {s.id: (s.status, s.note) for s in report.sections}
    assert {k: v[0] for k, v in status.items()} == {**dict.fromkeys(status, "ok"), "decisions": "no_data"}, status
    latency = next(s for s in report.sections if s.id == "latency")
    by_status = {r["status"]: r["predictions"] for r in latency.tables[1].rows}
    assert by_status == {"ok": 3, "invalid": 1, "null": 2}  # bad-1 and bad-3 have no status
    assert latency.tables[0].rows[0]["timed"] == 4  # bad-1 and bad-3 have no latency
    freshness = next(s for s in report.sections if s.id == "freshness")
    assert all(r["predictions"] == 3 for r in freshness.tables[0].rows)  # the three real ones; bad rows skipped
    assert next(s for s in report.sections if s.id == "dlq").note == "no dead letters: every event was accepted"
