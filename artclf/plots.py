"""Plots of a run, drawn from its files (``history.jsonl``, metrics), never from memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from artclf.atomic import atomic_open


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def read_history(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def learning_curve(history: list[dict], path: Path) -> None:
    """Loss (train, val) and val accuracy / macro F1 per epoch."""
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    evaluated = [h for h in history if "val_log_loss" in h]  # --eval-every skips some epochs
    val_ep = [h["epoch"] for h in evaluated]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss (0.3 CE + 0.7 soft-F1)")
    a.plot(val_ep, [h["val_log_loss"] for h in evaluated], "o-", label="val cross-entropy")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend()
    for key, label in (("val_accuracy", "val accuracy"), ("val_macro_f1", "val macro F1")):
        b.plot(val_ep, [h[key] for h in evaluated], "o-", label=label)
    b.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    b.legend()
    save(fig, path)


def confusion_matrix(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix with every class named on both axes."""
    plt = pyplot()
    m = np.asarray(cm, dtype=float)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.22 * n + 3, 0.22 * n + 2.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.03, label="fraction of the true class")
    save(fig, path)


def reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int, title: str) -> None:
    """Reliability diagram: per confidence bin (equal width, as ECE bins them), accuracy against
    mean confidence, one line per ``label -> (probs N×C, labels N)``; the diagonal is perfect."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for label, (probs, y) in curves.items():
        conf, correct = probs.max(1), probs.argmax(1) == y
        which = np.searchsorted(edges[1:-1], conf, side="left")
        used = [b for b in range(bins) if (which == b).any()]
        xs = [conf[which == b].mean() for b in used]
        ys = [correct[which == b].mean() for b in used]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    save(fig, path)
