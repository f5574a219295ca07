"""Bootstrap intervals against a plain loop: the same draws (the module's documented
``default_rng(seed).integers(0, units, size=(resamples, units))``), each resample materialised
as an array of images and scored by scikit-learn, then ``np.percentile``. Per image and by
duplicate group (a drawn group brings all its members)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from artclf.metrics import bootstrap
from artclf.metrics.classification import classification_metrics

C = 8
RESAMPLES = 300  # enough to compare every percentile, cheap enough for a loop over scikit-learn
CLASSES = [f"Artist_{i}" for i in range(C)]


def predictions(n: int, seed: int = 0, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of random logits nudged towards the truth; class C-1 is never a true label (a
    class without support scores 0, as in artclf.metrics.classification)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C - 1, n)
    logits = rng.normal(size=(n, C)) * 2
    logits[np.arange(n), y] += skill
    p = np.exp(logits - logits.max(1, keepdims=True))
    return y, (p / p.sum(1, keepdims=True)).astype(np.float32)


def duplicate_groups(y: np.ndarray, seed: int = 1) -> list[str]:
    """One group name per image: runs of 1 to 4 images of one artist share a painting."""
    rng = np.random.default_rng(seed)
    groups, i = [None] * len(y), 0
    for artist in range(C):
        members = np.flatnonzero(y == artist)
        while len(members):
            size = int(rng.integers(1, 5))
            for m in members[:size]:
                groups[m] = f"{CLASSES[artist]}/{i}"
            members, i = members[size:], i + 1
    return groups


def scores(y: np.ndarray, probs: np.ndarray, absent=()) -> dict[str, float]:
    """Every statistic of one (resampled) array of images, by scikit-learn: macro averages over
    the classes it holds, true or predicted (scikit-learn's own choice without ``labels``), and
    the classes ``absent`` from the whole split (0, as artclf.metrics.classification scores them)."""
    pred, num_classes = probs.argmax(1), probs.shape[1]
    labels = np.union1d(np.union1d(y, pred), np.asarray(absent, dtype=int))
    p, r, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "macro_f1": f1.mean(),
        "macro_precision": p.mean(),
        "macro_recall": r.mean(),
        "top5_accuracy": skm.top_k_accuracy_score(y, probs, k=5, labels=range(num_classes)),
    }


def absent_from(y: np.ndarray, num_classes: int = C) -> np.ndarray:
    return np.setdiff1d(np.arange(num_classes), y)


def resamples(n: int, groups, count: int, seed: int) -> list[np.ndarray]:
    """The images of each resample: the drawn units, a group expanded to all its members."""
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        names = sorted(set(groups))  # unit u is the u-th group name in sorted order (np.unique's)
        members = [np.array([i for i, g in enumerate(groups) if g == name]) for name in names]
    draws = np.random.default_rng(seed).integers(0, len(members), size=(count, len(members)))
    return [np.concatenate([members[u] for u in row]) for row in draws]


def percentiles(values: list[float], confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


@pytest.mark.parametrize("by", ["image", "group"])
def test_intervals_equal_a_loop_over_scikit_learn(by):
    y, probs = predictions(240)
    groups = duplicate_groups(y) if by == "group" else None
    assert groups is None or len(set(groups)) < len(y) / 1.5  # real groups, not singletons
    seed, confidence = 5, 0.9
    got = bootstrap.intervals(y, probs, groups, resamples=RESAMPLES, seed=seed, confidence=confidence)
    absent = absent_from(y)
    loop = [scores(y[idx], probs[idx], absent) for idx in resamples(len(y), groups, RESAMPLES, seed)]
    point = classification_metrics(y, probs, CLASSES)
    assert got["unit"] == ("image" if groups is None else "duplicate group")
    assert (got["resamples"], got["seed"], got["confidence"]) == (RESAMPLES, seed, confidence)
    assert set(got) == {*bootstrap.STATS, "resamples", "seed", "confidence", "unit"}
    for k in bootstrap.STATS:
        low, high = percentiles([s[k] for s in loop], confidence)
        assert got[k]["value"] == pytest.approx(point[k], abs=1e-12), k
        assert got[k]["low"] == pytest.approx(low, abs=1e-12), k
        assert got[k]["high"] == pytest.approx(high, abs=1e-12), k
        assert low < point[k] < high, k  # a sane interval holds its value


def test_a_split_with_a_test_image_or_two_per_class_gets_an_interval_around_its_value():
    """The shape of the demo's test split (56 images, 50 artists) and of the real one's rare
    artists: most resamples miss some classes. Scoring a missed class 0 put the whole interval
    below the value (`macro_f1 0.8128 [0.448, 0.624]` in make demo)."""
    classes, rng = 50, np.random.default_rng(7)
    y = np.concatenate([np.arange(classes), rng.integers(0, classes, 10)])  # 1 or 2 per class
    logits = rng.normal(size=(len(y), classes))
    logits[np.arange(len(y)), y] += 3.0
    got = bootstrap.intervals(y, logits, resamples=RESAMPLES, seed=2)
    point = classification_metrics(y, logits, [str(i) for i in range(classes)])
    loop = [scores(y[idx], logits[idx]) for idx in resamples(len(y), None, RESAMPLES, 2)]
    for k in ("macro_f1", "macro_precision", "macro_recall", "accuracy"):
        low, high = percentiles([s[k] for s in loop], 0.95)
        assert got[k]["value"] == pytest.approx(point[k], abs=1e-12), k
        assert (got[k]["low"], got[k]["high"]) == pytest.approx((low, high), abs=1e-12), k
        assert low < point[k] < high, (k, low, point[k], high)


def test_paired_difference_equals_a_loop_over_scikit_learn():
    y, a = predictions(200, seed=3, skill=2.0)
    _, b = predictions(200, seed=3, skill=1.0)  # the same images, a weaker model
    groups = duplicate_groups(y)
    got = bootstrap.paired_difference(y, a, b, groups, resamples=RESAMPLES, seed=11, confidence=0.95)
    diffs: dict[str, list[float]] = {"macro_f1": [], "accuracy": []}
    for idx in resamples(len(y), groups, RESAMPLES, 11):
        sa, sb = scores(y[idx], a[idx], absent_from(y)), scores(y[idx], b[idx], absent_from(y))
        for k in diffs:
            diffs[k].append(sa[k] - sb[k])
    pa, pb = classification_metrics(y, a, CLASSES), classification_metrics(y, b, CLASSES)
    assert got["n"] == len(y) and got["unit"] == "duplicate group"
    for k, d in diffs.items():
        low, high = percentiles(d, 0.95)
        d = np.array(d)
        better = (d > 0).mean() + 0.5 * (d == 0).mean()
        assert got[k]["a"] == pytest.approx(pa[k], abs=1e-12) and got[k]["b"] == pytest.approx(
            pb[k], abs=1e-12
        )
        assert got[k]["difference"] == pytest.approx(pa[k] - pb[k], abs=1e-12)
        assert (got[k]["low"], got[k]["high"]) == pytest.approx((low, high), abs=1e-12), k
        assert got[k]["a_better"] == pytest.approx(better, abs=1e-12), k
        assert got[k]["a_better"] > 0.9, k  # the stronger model wins on most resamples


def test_a_model_against_itself_differs_by_exactly_nothing():
    y, p = predictions(150)
    got = bootstrap.paired_difference(y, p, p, resamples=500)
    for k in ("macro_f1", "accuracy"):
        assert got[k]["difference"] == got[k]["low"] == got[k]["high"] == 0.0
        assert got[k]["a_better"] == 0.5  # every resample a tie, counted half


def test_the_interval_narrows_as_the_split_grows():
    """About 1/sqrt(n): 16 times the images, about a quarter of the width."""
    small, large = (bootstrap.intervals(*predictions(n), resamples=500) for n in (100, 1600))
    for k in ("accuracy", "macro_f1"):
        widths = [iv[k]["high"] - iv[k]["low"] for iv in (small, large)]
        assert 0 < widths[1] < widths[0] / 2, (k, widths)


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    y, p = predictions(120)
    once, again = (bootstrap.intervals(y, p, resamples=200, seed=4) for _ in range(2))
    other = bootstrap.intervals(y, p, resamples=200, seed=5)
    assert once == again and once != other


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.2])
def test_a_confidence_outside_0_1_is_refused(confidence):
    y, p = predictions(20)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap.intervals(y, p, resamples=10, confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap.paired_difference(y, p, p, resamples=10, confidence=confidence)


def test_mismatched_shapes_are_refused():
    y, p = predictions(20)
    with pytest.raises(ValueError, match="same images"):
        bootstrap.paired_difference(y, p, p[:19], resamples=10)
    with pytest.raises(ValueError, match="same images"):
        bootstrap.paired_difference(y[:19], p, p, resamples=10)
    with pytest.raises(ValueError, match="groups has 19 entries for 20 images"):
        bootstrap.intervals(y, p, groups=list(range(19)), resamples=10)
    with pytest.raises(ValueError):
        bootstrap.intervals(y[:19], p, resamples=10)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap.intervals(y, p, resamples=0)
