"""How sure a score is: percentile bootstrap intervals, and the paired bootstrap of a difference.

A resample draws the split's units (images, or whole duplicate groups when ``groups`` is given)
with replacement, as many as there are; every statistic of that resample is computed from
per-class counts weighted by how often each image was drawn, so all resamples are a few matrix
products, not a Python loop.

Which classes a macro average of a resample runs over: those the resample holds (true or
predicted, as scikit-learn's ``average="macro"`` without ``labels``), plus every class the
whole split lacks. A class the split has but a resample did not draw, and that nothing was
predicted as, is out of that resample: scoring it 0 would drag each resample down by the share
of classes it missed (a third of them where classes have one test image each, as in a small
split), an interval below its own point. A class the whole split lacks scores 0 in every
resample, as in :mod:`artclf.metrics.classification`, so with all weights 1 the statistics are
exactly that module's (all C classes).

The draws are a pure function of ``seed``:
``np.random.default_rng(seed).integers(0, units, size=(resamples, units))``, so a second run,
or a loop written independently (tests/metrics/test_bootstrap.py), sees the same resamples.
The interval is the percentile interval of Efron & Tibshirani (1993, ch. 13), with
``np.percentile``'s default (linear) interpolation.

Why whole groups: two photographs of one painting are one piece of evidence, not two; a
resample that may draw one without the other would pretend the test split is larger than it
is and make the interval too narrow. artclf's test split keeps one image per duplicate group
(dedup drops the copies), so there its unit is the image.
"""

from __future__ import annotations

import numpy as np

from artclf.metrics.classification import TOP_K

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
STATS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "top5_accuracy")


def draws(units: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, units] indices of the units each resample draws (with replacement)."""
    if units < 1 or resamples < 1:
        raise ValueError(f"need at least one unit and one resample; got {units} and {resamples}")
    return np.random.default_rng(seed).integers(0, units, size=(resamples, units))


def weights(n: int, groups=None, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n] how many times each of the n images is in each resample.

    ``groups``: one hashable per image (its duplicate group); images of one group are drawn
    together. None: every image is its own unit."""
    if groups is None:
        member = np.arange(n)
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} images")
        _, member = np.unique(np.asarray(groups), return_inverse=True)
        member = member.reshape(-1)
    units = int(member.max()) + 1
    idx = draws(units, resamples, seed)
    offsets = np.arange(resamples)[:, None] * units
    counts = np.bincount((idx + offsets).ravel(), minlength=resamples * units).reshape(resamples, units)
    return counts[:, member].astype(np.float64)


def _top_k_hit(y_true: np.ndarray, probs: np.ndarray, k: int = TOP_K) -> np.ndarray:
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return (top == y_true[:, None]).any(1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def statistics(y_true, probs, w: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic of :data:`STATS` under each row of weights ``w`` [R, N]: arrays [R]."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    if probs.ndim != 2 or y_true.shape != (probs.shape[0],) or w.shape[1:] != y_true.shape:
        raise ValueError(f"need labels [N], probs [N, C], weights [R, N]; got {y_true.shape}, "
                         f"{probs.shape}, {w.shape}")  # fmt: skip
    num_classes = probs.shape[1]
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got {y_true.min()}..{y_true.max()}")
    y_true = y_true.astype(np.int64)
    y_pred = probs.argmax(1)
    truth = np.eye(num_classes)[y_true]  # [N, C]
    predicted = np.eye(num_classes)[y_pred]
    correct = (y_pred == y_true).astype(np.float64)
    total = w.sum(1)
    tp = w @ (truth * correct[:, None])  # [R, C]
    support, called = w @ truth, w @ predicted
    precision, recall = _ratio(tp, called), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + called)  # = 2PR/(P+R); 0 where both are 0 (zero_division=0)
    # the classes each macro average runs over (module docstring): drawn or predicted, or absent
    # from the whole split
    counted = (support > 0) | (called > 0) | (truth.sum(0) == 0)
    n_counted = counted.sum(1)

    def macro(per_class: np.ndarray) -> np.ndarray:
        return (per_class * counted).sum(1) / n_counted

    return {
        "accuracy": (w @ correct) / total,
        "macro_f1": macro(f1),
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "top5_accuracy": (w @ _top_k_hit(y_true, probs).astype(np.float64)) / total,
    }


def _percentiles(values: np.ndarray, confidence: float) -> list[float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def _about(resamples: int, seed: int, confidence: float, groups) -> dict:
    """How a result was drawn (the head of every result), the confidence checked."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    unit = "image" if groups is None else "duplicate group"
    return {"resamples": resamples, "seed": seed, "confidence": confidence, "unit": unit}


def intervals(
    y_true,
    probs,
    groups=None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict:
    """The point value and percentile interval of each statistic, JSON-ready:
    ``{"accuracy": {"value": v, "low": lo, "high": hi}, …, "resamples", "seed", "confidence",
    "unit"}``."""
    out = _about(resamples, seed, confidence, groups)
    n = len(y_true)
    point = statistics(y_true, probs, np.ones((1, n)))
    boot = statistics(y_true, probs, weights(n, groups, resamples, seed))
    for k in STATS:
        low, high = _percentiles(boot[k], confidence)
        out[k] = {"value": float(point[k][0]), "low": low, "high": high}
    return out


def paired_difference(
    y_true,
    probs_a,
    probs_b,
    groups=None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    stats: tuple[str, ...] = ("macro_f1", "accuracy"),
) -> dict:
    """A − B on the same images, both scored on each of the same resamples: the difference, its
    percentile interval, and the share of resamples where A scores higher (``a_better``; ties
    count half). An interval that holds 0 says the split cannot tell the two apart."""
    out = _about(resamples, seed, confidence, groups)
    probs_a, probs_b = np.asarray(probs_a), np.asarray(probs_b)
    if probs_a.shape != probs_b.shape or probs_a.shape[0] != len(y_true):
        raise ValueError(f"paired scores need the same images: {probs_a.shape} vs {probs_b.shape}")
    n = len(y_true)
    ones = np.ones((1, n))
    w = weights(n, groups, resamples, seed)
    a, b = statistics(y_true, probs_a, w), statistics(y_true, probs_b, w)
    pa, pb = statistics(y_true, probs_a, ones), statistics(y_true, probs_b, ones)
    out["n"] = n
    for k in stats:
        d = a[k] - b[k]
        low, high = _percentiles(d, confidence)
        better = float((d > 0).mean() + 0.5 * (d == 0).mean())
        out[k] = {"a": float(pa[k][0]), "b": float(pb[k][0]), "difference": float(pa[k][0] - pb[k][0]),
                  "low": low, "high": high, "a_better": better}  # fmt: skip
    return out


def interval(stat: dict, digits: int = 3) -> str:
    """``[0.781, 0.842]`` from an entry of :func:`intervals`."""
    return f"[{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def bracket(stat: dict, digits: int = 3) -> str:
    """``0.812 [0.781, 0.842]`` from an entry of :func:`intervals`."""
    return f"{stat['value']:.{digits}f} {interval(stat, digits)}"
