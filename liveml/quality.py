"""A binary classifier's quality over one window of outcomes: realised from labels, estimated from scores.

Realised figures are the usual ones, computed exactly over the window's rows (they equal scikit-learn's
``roc_auc_score``, ``log_loss``, ``brier_score_loss``, ``precision_score`` and ``recall_score`` on the same
rows; ``tests/unit/test_quality.py`` checks that to 1e-12).

Estimated figures need no label. They follow NannyML's confidence-based performance estimation (CBPE): if
the model is calibrated, a row with score ``p`` is a positive with probability ``p``, so every figure has an
expectation over the unknown labels, computed from the scores alone:

- positive rate: ``mean(p)``;
- log loss: ``mean(-(p log p + (1-p) log(1-p)))`` (the expected loss is the scores' mean entropy);
- Brier score: ``mean(p (1-p))``;
- precision at threshold ``t``: ``sum(p[p >= t]) / count(p >= t)``;
- recall at ``t``: ``sum(p[p >= t]) / sum(p)``;
- AUC: the ROC curve of expected true and false positives (each row a fractional positive ``p`` and
  negative ``1-p``), integrated by trapezoids, as CBPE does; that is, the probability a positive outranks a
  negative with ties counted half, over expected pairs.

When the model is not calibrated on the live data the estimate is biased; the monitor keeps each estimate
beside the realised value once labels arrive, so that error is on record.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

EPS = 1e-15  # scores are clipped to [EPS, 1-EPS] for log loss, as scikit-learn's log_loss does

REALISED = ("count", "positives", "positive_rate", "mean_score", "log_loss", "brier", "auc", "calibration",
            "precision", "recall")
ESTIMATED = ("positive_rate", "log_loss", "brier", "auc", "precision", "recall")


def _arrays(scores: Sequence[float], labels: Sequence[bool] | None = None):
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("scores must be probabilities in [0, 1] without NaN")
    if labels is None:
        return p, None
    y = np.asarray(labels, dtype=bool)
    if y.shape != p.shape:
        raise ValueError(f"labels shape {y.shape} differs from scores shape {p.shape}")
    return p, y


def _auc(p: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray) -> float | None:
    """Weighted Mann-Whitney AUC: P(score of a positive > score of a negative) + P(tie)/2, each row carrying
    ``pos_w`` of a positive and ``neg_w`` of a negative. None when either class has no weight."""
    total_pos, total_neg = float(pos_w.sum()), float(neg_w.sum())
    if total_pos <= 0 or total_neg <= 0:
        return None
    uniq, inverse = np.unique(p, return_inverse=True)  # ascending distinct scores
    pos = np.bincount(inverse, weights=pos_w, minlength=len(uniq))
    neg = np.bincount(inverse, weights=neg_w, minlength=len(uniq))
    neg_below = np.cumsum(neg) - neg  # negative weight at strictly lower scores
    wins = float((pos * neg_below).sum() + 0.5 * (pos * neg).sum())
    return wins / (total_pos * total_neg)


def realised(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.5) -> dict[str, Any]:
    """Figures of one window from its labels. ``scores`` (n,) in [0, 1], ``labels`` (n,) bool; a row is
    predicted positive when its score is ``>= threshold``. Figures a window cannot define are None: AUC
    with one class only, precision with no predicted positive, recall and calibration with no positive,
    every figure but ``count`` for an empty window."""
    p, y = _arrays(scores, labels)
    n = len(p)
    out: dict[str, Any] = dict.fromkeys(REALISED)
    out.update(count=n, positives=int(y.sum()))
    if n == 0:
        return out
    q = np.clip(p, EPS, 1 - EPS)
    predicted = p >= threshold
    tp = int((predicted & y).sum())
    out.update(
        positive_rate=float(y.mean()), mean_score=float(p.mean()),
        log_loss=float(-np.mean(np.where(y, np.log(q), np.log1p(-q)))),
        brier=float(np.mean((p - y) ** 2)),
        auc=_auc(p, y.astype(np.float64), (~y).astype(np.float64)),
        calibration=float(p.mean() / y.mean()) if y.any() else None,
        precision=tp / int(predicted.sum()) if predicted.any() else None,
        recall=tp / int(y.sum()) if y.any() else None,
    )
    return out


def estimated(scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """CBPE's expected figures of one window from its scores alone (see the module docstring); None for an
    empty window, and where the expectation's denominator is zero."""
    p, _ = _arrays(scores)
    out: dict[str, Any] = dict.fromkeys(ESTIMATED)
    if len(p) == 0:
        return out
    q = np.clip(p, EPS, 1 - EPS)
    predicted = p >= threshold
    expected_pos = float(p.sum())
    out.update(
        positive_rate=float(p.mean()),
        log_loss=float(-np.mean(q * np.log(q) + (1 - q) * np.log1p(-q))),
        brier=float(np.mean(p * (1 - p))),
        auc=_auc(p, p, 1 - p),
        precision=float(p[predicted].sum() / predicted.sum()) if predicted.any() else None,
        recall=float(p[predicted].sum() / expected_pos) if expected_pos > 0 else None,
    )
    return out


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
