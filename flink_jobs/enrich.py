"""What the enrichment job decides per event, as plain functions: routing, feature assembly, the output row.

Kept free of Flink and gRPC so unit tests can pin the rules down:

* **Routing** (:func:`routes_to_canary`): a trip goes to the canary label when a hash of its id falls below
  ``canary_fraction``. Deterministic, so a trip replayed after a restart is routed the same way, and the
  share converges to the fraction (binomial) over many trips.
* **Features** (:func:`context_requests`, :func:`assemble`): the model's inputs are
  :meth:`iceberg_schemas.training.TrainingSetSpec.feature_columns`, the same list training used: the
  request-time fields from the event itself, then each feature view's values for the event's entity from
  the online store. A view whose row is missing or past its TTL gives ``None`` for each of its features
  (the model reads them as missing), never stale values.
* **Output** (:func:`prediction_row`): one row per trip with the score or, if there is none, a status and
  the reason; the features sent, and per view the event time and age of the values used.
* **Statuses** (:data:`STATUSES`, :func:`status_of`) say why there is no score, so each has its own fix:
  ``timeout`` (no answer in time), ``unavailable`` (the server or the online store cannot be reached),
  ``no_model`` (the server has no such model, version or label: a model must be pushed or promoted, and
  the reason names the command), ``invalid`` (the model cannot take these inputs).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from iceberg_schemas.features import FeatureView
from iceberg_schemas.training import TIPS, TrainingSetSpec

STATUSES = ("ok", "timeout", "unavailable", "no_model", "invalid")

# gRPC status code name -> the row's status. NOT_FOUND is a model, version or label the server does not
# have ("no_model"); transport-level trouble is "unavailable"; anything else the server answers with is a
# request the model cannot take ("invalid").
_BY_CODE = {"OK": "ok", "DEADLINE_EXCEEDED": "timeout", "UNAVAILABLE": "unavailable", "CANCELLED": "unavailable",
            "RESOURCE_EXHAUSTED": "unavailable", "ABORTED": "unavailable", "UNKNOWN": "unavailable",
            "INTERNAL": "unavailable", "NOT_FOUND": "no_model"}


def status_of(code_name: str) -> str:
    """The row's status for a gRPC status code name (``grpc.StatusCode.X.name``)."""
    return _BY_CODE.get(code_name, "invalid")


def routes_to_canary(trip_id: str, canary_fraction: float) -> bool:
    """True for about ``canary_fraction`` of trip ids, always the same ones."""
    if canary_fraction <= 0:
        return False
    if canary_fraction >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(trip_id.encode(), digest_size=8).digest(), "big")
    return h / 2.0**64 < canary_fraction


def context_requests(event: Mapping[str, Any], spec: TrainingSetSpec = TIPS) -> list[tuple[FeatureView, Any]]:
    """``(view, entity)`` for each feature view of ``spec``: the entity is the event's field of that name."""
    return [(v, event.get(v.entity)) for v in spec.feature_views]


@dataclass
class Assembled:
    features: dict[str, Any]  # every feature column, None where missing
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # view -> status, event_time_ms, age_s


def assemble(event: Mapping[str, Any], rows: Sequence[Any], spec: TrainingSetSpec = TIPS) -> Assembled:
    """``rows``: the online store's :class:`liveml.online.base.EntityRow` per view, in
    :func:`context_requests` order."""
    features: dict[str, Any] = {name: _clean(event.get(name)) for name in spec.context_fields}
    views: dict[str, dict[str, Any]] = {}
    for view, row in zip(spec.feature_views, rows):
        ok = row is not None and row.status == "ok"
        for name in view.feature_names():
            features[name] = _clean(row.values.get(name)) if ok else None
        views[view.name] = {"status": row.status if row is not None else "missing",
                            "event_time_ms": row.event_time_ms if row is not None else None,
                            "age_s": round(row.age_s, 3) if row is not None and row.age_s is not None else None}
    return Assembled({k: features[k] for k in spec.feature_columns()}, views)


def _clean(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def model_inputs(features: Mapping[str, Any], missing_value) -> dict[str, Any]:
    """Raw features for ``serving_default``: a missing value becomes what the signature reads as missing
    (``missing_value(name)``: NaN, "" or -1; see :func:`tfx_pipeline.features.missing_serving_value`)."""
    return {k: (missing_value(k) if v is None else v) for k, v in features.items()}


@dataclass
class Outcome:
    status: str  # one of STATUSES
    score: float | None = None
    model_version: int | None = None
    reason: str | None = None
    retries: int = 0
    shadow_version: int | None = None
    shadow_score: float | None = None


def prediction_row(event: Mapping[str, Any], assembled: Assembled | None, outcome: Outcome, model_name: str,
                   label: str, latency_ms: float, predicted_at_ms: int) -> dict[str, Any]:
    """The enriched record, as written to Kafka ``predictions`` (JSON) and ``predictions.trips``."""
    if outcome.status not in STATUSES:
        raise ValueError(f"status {outcome.status!r} is not one of {STATUSES}")
    return {
        "trip_id": str(event.get("trip_id")),
        "event_time": int(event["event_time"]),
        "model_name": model_name,
        "model_version": outcome.model_version,
        "model_label": label,
        "score": outcome.score,
        "status": outcome.status,
        "fallback_reason": outcome.reason,
        "latency_ms": round(latency_ms, 3),
        "features": json.dumps(assembled.features, sort_keys=True) if assembled else None,
        "feature_ages": json.dumps(assembled.views, sort_keys=True) if assembled else None,
        "shadow_model_version": outcome.shadow_version,
        "shadow_score": outcome.shadow_score,
        "retries": outcome.retries,
        "predicted_at": int(predicted_at_ms),
    }
