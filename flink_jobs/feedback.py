"""The feedback join's rules, without Flink: which label a prediction gets, and the outcome row it makes.

The feedback job (:mod:`flink_jobs.feedback_job`) keys predictions and labels by trip and holds them in
keyed state; these functions decide, so the rules can be tested on their own and read in one place.

The join is an event-time interval join: a label counts for a prediction made at ``decision_time`` when
``decision_time <= label_time <= decision_time + max_label_delay``. Of several such labels the latest
``label_time`` wins, at equal times the smallest value: the training set's rule
(:func:`iceberg_schemas.training.latest_label_key`), so an outcome's label is the one a training set built
over the same labels would use.
"""

from __future__ import annotations

from dataclasses import dataclass

from iceberg_schemas.tables import OUTCOMES
from iceberg_schemas.training import latest_label_key

# what the job reads of a prediction (Kafka topic ``predictions``, written by the enrichment job) and of a
# label (topic ``labels``, validated as the feature job validates it); times are epoch milliseconds
PREDICTION_FIELDS = ("trip_id", "event_time", "model_name", "model_version", "model_label", "status", "score",
                     "shadow_model_version", "shadow_score", "predicted_at")
LABEL_FIELDS = ("trip_id", "label_time", "decision_time", "label")

# monitoring.outcomes' columns in order; the job's rows carry the times as epoch milliseconds
OUTCOME_FIELDS = tuple(f.name for f in OUTCOMES.schema.fields)

# Counters of the job (group ``liveml.feedback``), as Flink's Prometheus reporter exports them:
# ``flink_taskmanager_job_task_operator_liveml_feedback_<name>``; ``outcomes`` per ``outcome`` label.
COUNTERS = ("labels", "labels_without_prediction", "duplicate_labels", "labels_after_max_delay",
            "labels_before_decision", "late_labels", "unscored_predictions", "duplicate_predictions")


@dataclass(frozen=True)
class Label:
    """One label event. ``decision_time`` may be missing from the event (None)."""

    trip_id: str
    label_time: int
    decision_time: int | None
    value: float

    @classmethod
    def from_row(cls, row) -> "Label":
        return cls(row[0], int(row[1]), None if row[2] is None else int(row[2]), float(row[3]))

    def key(self) -> tuple:
        return latest_label_key(self.label_time, self.value)


def placement(label: Label, decision_time: int, max_delay_ms: int) -> str:
    """Where ``label`` falls for a decision at ``decision_time``: ``within``, ``after_max_delay`` or
    ``before_decision`` (a label known before the prediction was made: an inconsistent event)."""
    delay = label.label_time - decision_time
    if delay < 0:
        return "before_decision"
    return "within" if delay <= max_delay_ms else "after_max_delay"


def winner(current: Label | None, new: Label) -> Label:
    """The label that counts of ``current`` and ``new``: the latest label time, then the smallest value."""
    return new if current is None or new.key() < current.key() else current


def outcome_row(prediction, label: Label | None, labels_seen: int, max_delay_ms: int) -> tuple:
    """The ``monitoring.outcomes`` row (in :data:`OUTCOME_FIELDS` order, times as epoch ms) of a
    prediction (a row in :data:`PREDICTION_FIELDS` order) and its winning label, or ``None``: unlabelled."""
    p = dict(zip(PREDICTION_FIELDS, prediction))
    decision = int(p["event_time"])
    row = {"trip_id": p["trip_id"], "decision_time": decision, "model_name": p["model_name"],
           "model_version": p["model_version"], "model_label": p["model_label"], "status": p["status"],
           "score": p["score"], "outcome": "labelled" if label is not None else "unlabelled",
           "label": label.value if label is not None else None,
           "label_time": label.label_time if label is not None else None,
           "label_delay_s": (label.label_time - decision) / 1000.0 if label is not None else None,
           "labels_seen": labels_seen, "max_label_delay_s": max_delay_ms // 1000,
           "shadow_model_version": p["shadow_model_version"], "shadow_score": p["shadow_score"],
           "predicted_at": p["predicted_at"]}
    return tuple(row[n] for n in OUTCOME_FIELDS)
