"""Metrics of a split against scikit-learn, and the calibration error by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from artclf.metrics.classification import classification_metrics, expected_calibration_error

CLASSES = [f"Artist_{i}" for i in range(8)]


def predictions(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of random logits, nudged towards the truth; class 7 never is a true label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES) - 1, n)
    logits = rng.normal(size=(n, len(CLASSES))) * 2
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits - logits.max(1, keepdims=True))
    return y, (p / p.sum(1, keepdims=True)).astype(np.float32)


def test_every_metric_equals_sklearn():
    y, p = predictions()
    m = classification_metrics(y, p, CLASSES)
    pred, labels = p.argmax(1), range(len(CLASSES))
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for name, fn in [("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)]:
        ref = fn(y, pred, labels=labels, average="macro", zero_division=0)
        assert m[f"macro_{name}"] == pytest.approx(ref), name
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=5, labels=labels))
    p64 = p.astype(np.float64) / p.astype(np.float64).sum(1, keepdims=True)  # sklearn warns on float32 sums
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p64, labels=labels), rel=1e-6)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    assert list(m["per_class"]) == CLASSES
    for i, c in enumerate(CLASSES):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((prec[i], rec[i], f1[i]))
        assert got["support"] == sup[i]
    assert m["confidence"] == pytest.approx(float(p.max(1).mean()))
    assert m["absent_classes"] == ["Artist_7"]
    assert 0 < m["accuracy"] < 1 and m["top5_accuracy"] > m["accuracy"]  # a non-trivial case


def test_json_serialisable_plain_types():
    y, p = predictions(50)
    m = classification_metrics(y, p, CLASSES)
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_ece_by_hand():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.45, 0.55]])
    y = np.array([0, 1, 0, 1])
    # bin (0.867, 0.933]: conf .9, acc .5 → gap .4; bin (0.533, 0.6]: conf .55, acc 1 → gap .45
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)
    assert expected_calibration_error(p, y, bins=1) == pytest.approx(abs(0.75 - 0.725))  # one bin differs
    assert classification_metrics(y, p, ["a", "b"])["ece"] == pytest.approx(0.425)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    p = np.array([[1.0, 0.0]] * 3)
    assert expected_calibration_error(p, np.array([0, 0, 0])) == 0  # conf 1.0 falls in the last bin
    assert expected_calibration_error(p, np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_log_loss_is_clipped_and_bad_shapes_are_refused():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    m = classification_metrics(np.array([1, 0]), p, ["a", "b"])
    assert m["log_loss"] == pytest.approx((-np.log(1e-15) - np.log(0.5)) / 2)
    with pytest.raises(ValueError, match="3 class names"):
        classification_metrics(np.array([1, 0]), p, ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(np.array([2, 0]), p, ["a", "b"])
