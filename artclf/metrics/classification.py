"""Classification metrics of one split, from the gathered predictions of every rank.

Computed once on the full arrays (every sample exactly once), never averaged over ranks, so
1 process and N processes report the same numbers on the same weights.

Macro averages run over all C classes (``labels=range(C)``, ``zero_division=0``): a class
absent from ``y_true`` scores 0 instead of being dropped, so the denominator is the same for
every split, run and world size, and a split that lost a class reports lower, never silently
higher. Such classes are listed under ``absent_classes``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

ECE_BINS = 15  # Guo et al. 2017, "On Calibration of Modern Neural Networks"
LOG_LOSS_EPS = 1e-15  # clip of p(true class): a confident miss costs 34.5 nats, not infinity
TOP_K = 5


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or y_true.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(f"need y_true [N] and probs [N, C] with N > 0; got {y_true.shape} and {probs.shape}")
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}); got {y_true.min()}..{y_true.max()}")
    return y_true.astype(np.int64), probs


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b |B_b|/N · |accuracy(B_b) − mean confidence(B_b)|.

    Confidence is the max probability; bins are equal-width, right-closed ``(lo, hi]`` on [0, 1];
    empty bins contribute nothing (Guo et al. 2017).
    """
    y_true, probs = _check(y_true, probs)
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    # searchsorted(left) on the inner edges puts conf in (e_b, e_b+1] into bin b; conf 1.0 → last.
    which = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], conf, side="left")
    ece = 0.0
    for b in np.unique(which):
        m = which == b
        ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def top_k_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int = TOP_K) -> float:
    """Share of samples whose true class is among the k most probable (k capped at C)."""
    y_true, probs = _check(y_true, probs)
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(1).mean())


def log_loss(probs: np.ndarray, y_true: np.ndarray, eps: float = LOG_LOSS_EPS) -> float:
    """Mean −log p(true class), p clipped to [eps, 1]; rows are used as given (no renormalising)."""
    y_true, probs = _check(y_true, probs)
    p = probs[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(p, eps, 1.0)).mean())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Every number of ``metrics.json`` for one split; plain floats, ints and lists (JSON-ready).

    ``y_true`` [N] class indices, ``probs`` [N, C] softmax probabilities, ``classes`` the C names.
    """
    y_true, probs = _check(y_true, probs)
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(classes)} class names")
    labels = list(range(len(classes)))
    y_pred = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "top5_accuracy": top_k_accuracy(probs, y_true, TOP_K),
        "confidence": float(probs.max(1).mean()),  # mean max softmax probability
        "ece": expected_calibration_error(probs, y_true, ECE_BINS),
        "log_loss": log_loss(probs, y_true),
        "absent_classes": [c for c, s in zip(classes, support, strict=True) if s == 0],
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),  # rows: true class
    }
