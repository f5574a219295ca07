"""Confidence that means something, and "none of these artists".

* **Temperature scaling** (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
  scalar T > 0 minimising the negative log-likelihood of ``softmax(logits / T)`` on val,
  found with L-BFGS on log T. The argmax, so accuracy and F1, do not change; confidence and
  ECE do. The trainer fits it on the val predictions of the epoch it keeps and stores it in
  ``model.pt`` (``calibration``); :class:`artclf.model.Classifier` divides by it.
* **Open set**: the score of an image is its calibrated maximum probability (Hendrycks &
  Gimpel 2017, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples").
  The threshold is the score below which a stated share of val (``reject_rate``, images of
  artists the model knows) falls; predict and serve answer ``unknown`` below it. The share of
  unseen artists' paintings it rejects is measured by ``artclf evaluate --unseen DIR``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from artclf.metrics.classification import expected_calibration_error

SCORE = "max_probability"  # calibrated softmax maximum
T_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p, 1e-300)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the NLL of ``softmax(logits / T)`` (L-BFGS on log T, float64),
    clipped to ``T_RANGE``."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        return 1.0
    # an all-correct val has no minimum (NLL falls as T -> 0): keep T within a sane range
    return float(np.clip(t, *T_RANGE))


def threshold_for(scores: np.ndarray, reject_rate: float) -> float:
    """The lowest threshold that rejects (score < threshold) at most ``reject_rate`` of ``scores``."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    return float(s[min(int(np.floor(reject_rate * len(s))), len(s) - 1)])


def auroc(known: np.ndarray, unseen: np.ndarray) -> float:
    """P(score of a known image > score of an unseen one), ties counted half (Mann-Whitney U)."""
    known, unseen = np.asarray(known, np.float64), np.asarray(unseen, np.float64)
    if not len(known) or not len(unseen):
        raise ValueError("AUROC needs scores of both known and unseen images")
    both = np.concatenate([known, unseen])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)  # tied: mean rank
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2
    return float(u / (len(known) * len(unseen)))


def calibrate(logits: np.ndarray, labels: np.ndarray, reject_rate: float) -> dict:
    """``model.pt``'s ``calibration`` and ``open_set`` from uncalibrated val logits."""
    labels = np.asarray(labels)
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    scores = after.max(1)
    threshold = threshold_for(scores, reject_rate)
    return {
        "calibration": {
            "temperature": t,
            "fitted_on": "val",
            "n": len(labels),
            "nll_before": nll(logits, labels),
            "nll_after": nll(logits, labels, t),
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels),
        },
        "open_set": {
            "score": SCORE,
            "threshold": threshold,
            "reject_rate": reject_rate,
            "val_rejected": float((scores < threshold).mean()),
        },
    }


def is_known(probs: np.ndarray, open_set: dict | None) -> np.ndarray:
    """Per row of calibrated probabilities: at or above the model's threshold (all True without one)."""
    probs = np.asarray(probs)
    if not open_set:
        return np.ones(len(probs), bool)
    return probs.max(1) >= open_set["threshold"]
