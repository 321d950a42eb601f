"""The end of `liveml demo`: the figures a person reads, and where to look next.

Built from what the steps of :mod:`liveml.demo` found, and from the tables and topics themselves (the
predictions of the live trips, the dead letters), so it reports what landed, not what was sent.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the summary reads a finished run; it never drives one
    from liveml.demo import Demo


def summarize(d: Demo) -> dict[str, Any]:
    """The figures a person reads at the end: events, dead letters, freshness, the training set, the model,
    predictions by version and status with latencies, example predictions, and where to look next."""
    from liveml.dlq import dead_letters
    from liveml.ingest import predictions_of
    from liveml.offline import OfflineStore

    live = d.results.get("live", {})
    ends = live.get("trip_ids", [])
    model = d.results.get("training", {}).get("model", {})
    store = OfflineStore.from_config(d.cfg)
    by_status, examples = [], []
    if ends:
        con = predictions_of(store, ends)
        by_status = con.execute("""
            SELECT model_version, status, count(*) AS predictions,
                   round(quantile_cont(latency_ms, 0.5), 1) AS latency_p50_ms,
                   round(quantile_cont(latency_ms, 0.99), 1) AS latency_p99_ms
            FROM p JOIN wanted USING (trip_id) GROUP BY ALL ORDER BY predictions DESC""").arrow().to_pylist()
        examples = con.execute("""
            SELECT trip_id, model_version, score, status, latency_ms, features FROM p JOIN wanted USING (trip_id)
            WHERE status = 'ok' ORDER BY event_time DESC LIMIT 3""").arrow().to_pylist()
    for ex in examples:
        ex["features"] = json.loads(ex["features"]) if ex.get("features") else None
    ok_from_model = sum(r["predictions"] for r in by_status
                        if r["status"] == "ok" and r["model_version"] == model.get("version"))
    history = d.results.get("history", {})
    dlq = dead_letters(d.cfg)
    ex = examples[0] if examples else None
    area = (ex or {}).get("features", {}) or {}
    commands = {
        "query": d.command("query", "predictions.trips", "--where", f"trip_id = '{ex['trip_id']}'" if ex else "status = 'ok'",
                           "--columns", "trip_id,model_version,score,status,latency_ms", "--limit", "5"),
        "predict": d.command("predict", "--label", d.cfg.enrich.label, "--json",
                             json.dumps(ex["features"]) if ex else "{}"),
        "features": d.command("features", "get", str(area.get("pickup_community_area") or 8),
                              "--view", "pickup_area_1h"),
        "stop": d.command("down"),
    }
    return {
        "ok": bool(model.get("version")) and ok_from_model > 0,
        "seconds": round(time.time() - d.started_ms / 1000, 1),
        "steps": {k: v.get("seconds") for k, v in d.results.items() if isinstance(v, dict)},
        "jobs": {name: j["job_id"] for name, j in d.results.get("jobs", {}).items() if isinstance(j, dict)},
        "events": {"history_sent": history.get("events_sent", 0), "live_sent": live.get("events_sent", 0),
                   "dead_lettered": {t: v["count"] for t, v in dlq.items()},
                   "dead_letter_reasons": {t: v["reasons"] for t, v in dlq.items()}},
        "feature_freshness": {"p50_ms": live.get("freshness_p50_ms"), "p99_ms": live.get("freshness_p99_ms"),
                              "samples": live.get("freshness_samples", 0)},
        "training_set": d.results.get("training", {}).get("training_set"),
        "model": model,
        "predictions": {"trips_ended": live.get("trips_ended", 0), "by_version_status": by_status,
                        "ok_from_model": ok_from_model},
        "examples": examples,
        "where": {"flink_ui": d.cfg.flink.rest_url, "prometheus": f"http://localhost:{d.cfg.prometheus.port}",
                  "logs": str(d.cfg.path("logs")), **commands},
    }




def render(result: dict[str, Any], console) -> None:
    ev, m, p = result["events"], result["model"], result["predictions"]
    ts = result.get("training_set") or {}
    fr = result["feature_freshness"]
    console.print(f"\n[bold]liveml demo[/] {'[green]OK[/]' if result['ok'] else '[red]FAILED[/]'} "
                  f"in {result['seconds']:.0f}s")
    console.print(f"events      history {ev['history_sent']:,}, live {ev['live_sent']:,}; dead-lettered "
                  + ", ".join(f"{t} {n}" for t, n in ev["dead_lettered"].items()))
    console.print(f"freshness   event -> Redis p50 {fr['p50_ms']} ms, p99 {fr['p99_ms']} ms ({fr['samples']} samples)")
    console.print(f"training    {ts.get('table')} @ {ts.get('snapshot_id')}: {ts.get('rows', 0):,} rows; inputs "
                  + ", ".join(f"{t}@{s}" for t, s in (ts.get("snapshot_ids") or {}).items()))
    auc, ll = m.get("auc"), m.get("log_loss")
    console.print(f"model       {m.get('name')} v{m.get('version')} ({'pushed now' if m.get('pushed') else 'kept'}), "
                  f"stable; eval AUC {auc if auc is None else f'{auc:.4f}'}, "
                  f"log loss {ll if ll is None else f'{ll:.4f}'}")
    console.print(f"predictions {p['trips_ended']:,} trips ended live; {p['ok_from_model']:,} ok from v{m.get('version')}")
    for r in p["by_version_status"]:
        console.print(f"            v{r['model_version']} {r['status']:<11} {r['predictions']:>6,}  latency p50 "
                      f"{r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms")
    for ex in result["examples"]:
        feats = ", ".join(f"{k}={v}" for k, v in (ex["features"] or {}).items())
        console.print(f"example     {ex['trip_id']}: P(big tip) {ex['score']:.3f} by v{ex['model_version']} "
                      f"[dim]{feats}[/]", highlight=False)
    console.print("\nwhere to look")
    for what, where in result["where"].items():
        console.print(f"  {what:<10} {where}", highlight=False, soft_wrap=True)
