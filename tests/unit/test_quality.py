"""Window quality against scikit-learn (realised) and against labels drawn from the scores (estimated)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

from liveml.quality import estimated, realised

pytestmark = pytest.mark.unit


def _window(n: int, seed: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, n)
    if ties:
        p = np.round(p, 1)  # many equal scores: AUC's ties count half
    y = rng.random(n) < p
    return p, y


@pytest.mark.parametrize("n,seed,ties,threshold", [(500, 1, False, 0.5), (2000, 2, True, 0.3), (37, 3, True, 0.2),
                                                   (5000, 4, False, 0.25)])
def test_realised_equals_sklearn(n, seed, ties, threshold):
    p, y = _window(n, seed, ties)
    got = realised(p, y, threshold)
    pred = p >= threshold
    assert got["count"] == n and got["positives"] == int(y.sum())
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got["log_loss"] == pytest.approx(log_loss(y, p, labels=[False, True]), abs=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert got["precision"] == pytest.approx(precision_score(y, pred), abs=1e-12)
    assert got["recall"] == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert got["positive_rate"] == pytest.approx(y.mean()) and got["mean_score"] == pytest.approx(p.mean())
    assert got["calibration"] == pytest.approx(p.mean() / y.mean())


def test_empty_one_class_and_no_predicted_positive_windows_are_none_not_errors():
    assert realised([], []) == {**dict.fromkeys(realised([0.5], [True])), "count": 0, "positives": 0}
    one = realised([0.2, 0.9, 0.4], [True, True, True])
    assert one["auc"] is None and one["recall"] == pytest.approx(1 / 3) and one["precision"] == 1.0
    none_pos = realised([0.1, 0.2], [False, False], threshold=0.5)
    assert (none_pos["precision"], none_pos["recall"], none_pos["calibration"]) == (None, None, None)
    assert estimated([])["auc"] is None
    assert estimated([0.1, 0.2], threshold=0.5)["precision"] is None


def test_scores_of_zero_and_one_are_clipped_as_sklearn_clips_them():
    p, y = np.array([0.0, 1.0, 1.0, 0.3]), np.array([True, True, False, False])
    assert realised(p, y)["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-9)


@pytest.mark.parametrize("bad", [[0.2, float("nan")], [1.2], [-0.1]])
def test_scores_outside_probabilities_are_refused(bad):
    with pytest.raises(ValueError, match="probabilities"):
        realised(bad, [True] * len(bad))


def test_estimates_are_the_expectation_over_labels_drawn_from_the_scores():
    """For a calibrated model the labels are Bernoulli(score): the estimate must match the mean realised
    figure over many such draws. Positive rate, log loss and Brier score are linear in the labels, so exact;
    precision, recall and AUC are ratios, so CBPE's ratio of expectations is close for a large window."""
    p, _ = _window(4000, 5)
    est = estimated(p, 0.3)
    rng = np.random.default_rng(6)
    draws = [realised(p, rng.random(len(p)) < p, 0.3) for _ in range(200)]
    mean = {k: float(np.mean([d[k] for d in draws])) for k in est}
    sem = {k: float(np.std([d[k] for d in draws]) / np.sqrt(len(draws))) for k in est}
    for k in ("positive_rate", "log_loss", "brier"):
        assert abs(est[k] - mean[k]) < 5 * sem[k] + 1e-12, (k, est[k], mean[k])
    for k in ("precision", "recall", "auc"):
        assert abs(est[k] - mean[k]) < 0.003, (k, est[k], mean[k])


def test_a_miscalibrated_model_makes_the_estimate_wrong_by_the_miscalibration():
    """Scores that are twice the true probability: the estimated positive rate is twice the realised one.
    The estimate is only as good as the calibration; the monitor records its error beside it."""
    rng = np.random.default_rng(7)
    true_p = rng.uniform(0.05, 0.45, 20000)
    y = rng.random(len(true_p)) < true_p
    scores = 2 * true_p
    assert estimated(scores)["positive_rate"] == pytest.approx(2 * realised(scores, y)["positive_rate"], rel=0.03)
