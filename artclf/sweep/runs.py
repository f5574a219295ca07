"""What a run folder and an eval folder hold, read for ``compare`` and ``sweep summary`` (never written).

A run folder (``artclf train``): ``config.json`` (``config``: the flags it started with,
``changes``: those a resume accepted), ``history.jsonl`` (a row per epoch), ``val_metrics.json``
(val metrics of the epoch ``model.pt`` was kept at), ``model.pt``, and a sweep point's
``sweep.json``. An eval folder (``artclf evaluate``): ``metrics.json``, ``predictions.csv``
(``key,label,pred,…``) and ``probabilities.npy`` (rows in predictions.csv order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artclf import plots
from artclf.errors import ArtclfError

TEST = "eval-test"  # where artclf evaluate writes a model's test scores (RUN/eval-test/)
EVAL_FILES = ("metrics.json", "predictions.csv", "probabilities.npy")


@dataclass(frozen=True)
class Scored:
    """One evaluation: the images' keys and labels, and the model's probabilities for them."""

    path: Path
    split: str
    keys: list[str]
    labels: np.ndarray
    probs: np.ndarray
    model: str | None
    model_created: str | None


@dataclass(frozen=True)
class Run:
    """A row of the table: a run folder (or an eval folder whose run is gone)."""

    path: Path
    name: str
    flags: dict | None  # None: no config.json (an eval folder alone)
    val_macro_f1: float | None  # of the epoch model.pt was kept at
    val_epoch: int | None
    epochs_done: int
    point: dict | None  # RUN/sweep.json of a sweep's point
    scored: Scored | None

    @property
    def finished(self) -> bool:
        """Trained to its last epoch (history.jsonl), with the model.pt it chose."""
        epochs = (self.flags or {}).get("epochs")
        return epochs is not None and self.epochs_done >= epochs and (self.path / "model.pt").is_file()


def _json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtclfError(f"{path}: missing; {what}") from None
    except (OSError, ValueError) as e:
        raise ArtclfError(f"{path}: unreadable ({type(e).__name__}: {e}); {what}") from None


def effective(record: dict) -> dict:
    """The flags a run has now: those it started with, each change a resume accepted applied."""
    flags = dict(record.get("config", {}))
    for change in record.get("changes", []):
        flags.update({k: new for k, (_old, new) in change.get("flags", {}).items()})
    return flags


def best_val(run: Path, history: list[dict]) -> tuple[float | None, int | None]:
    """Val macro F1 of the epoch model.pt was kept at: val_metrics.json (written with model.pt),
    else the best of history.jsonl; and that epoch (the first to reach it, as the trainer keeps)."""
    evaluated = [h for h in history if "val_macro_f1" in h]
    path = run / "val_metrics.json"
    value = _json(path, "the trainer writes it with model.pt")["macro_f1"] if path.is_file() else None
    if value is None and evaluated:
        value = max(h["val_macro_f1"] for h in evaluated)
    epoch = next((h["epoch"] for h in evaluated if h["val_macro_f1"] == value), None)
    return value, epoch


def read_eval(folder: Path) -> Scored:
    """An eval folder's predictions, checked: one row per image, probabilities in that order."""
    for name in EVAL_FILES:
        if not (folder / name).is_file():
            raise ArtclfError(f"{folder / name}: missing; not an eval folder of artclf evaluate (rerun it)")
    metrics = _json(folder / "metrics.json", "rerun artclf evaluate")
    try:
        with open(folder / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        keys = [r["key"] for r in rows]
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        probs = np.load(folder / "probabilities.npy")
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ArtclfError(
            f"{folder}: unreadable predictions ({type(e).__name__}: {e}); rerun evaluate"
        ) from None
    if probs.ndim != 2 or len(probs) != len(keys) or not len(keys):
        raise ArtclfError(
            f"{folder}: probabilities.npy has shape {probs.shape} for {len(keys)} rows of predictions.csv"
        )
    if len(set(keys)) != len(keys):
        raise ArtclfError(f"{folder / 'predictions.csv'}: a key appears twice")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ArtclfError(f"{folder / 'predictions.csv'}: a label outside the {probs.shape[1]} classes")
    return Scored(
        folder,
        metrics.get("split", "?"),
        keys,
        labels,
        probs,
        metrics.get("model"),
        metrics.get("model_created"),
    )


def read_run(folder: Path, scored: Scored | None = None, test: bool = True) -> Run:
    """A run folder; its test scores from ``scored``, else (``test``) from RUN/eval-test when there."""
    record = _json(folder / "config.json", "not a run folder of artclf train")
    history = plots.read_history(folder / "history.jsonl")
    val, epoch = best_val(folder, history)
    point = _json(folder / "sweep.json", "") if (folder / "sweep.json").is_file() else None
    if scored is None and test and (folder / TEST / "metrics.json").is_file():
        scored = read_eval(folder / TEST)
    done = max((h["epoch"] for h in history), default=0)
    return Run(folder, folder.name, effective(record), val, epoch, done, point, scored)


def resolve(path: Path) -> Run:
    """A ``compare`` argument: a run folder (config.json) or an eval folder (metrics.json)."""
    if (path / "config.json").is_file():
        return read_run(path)
    if (path / "metrics.json").is_file():
        scored = read_eval(path)
        run = Path(scored.model).parent if scored.model else None
        if run is not None and (run / "config.json").is_file():
            return read_run(run, scored)
        return Run(path, f"{path.parent.name}/{path.name}", None, None, None, 0, None, scored)
    raise ArtclfError(
        f"{path}: neither a run folder (no config.json) nor an eval folder (no metrics.json); pass "
        "RUN (artclf train --run) or its eval folder (artclf evaluate writes RUN/eval-test)"
    )


def model_created(model: Path) -> str | None:
    """``created`` of a model.pt, read without reading its weights (memory-mapped)."""
    import torch

    try:
        blob = torch.load(model, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any unreadable file: say which, the caller evaluates nothing
        raise ArtclfError(f"{model}: cannot read ({type(e).__name__}: {e})") from None
    return blob.get("created") if isinstance(blob, dict) else None


def scored_current(run: Path) -> bool:
    """RUN/eval-test is complete (its report.md is written last) and scored this model.pt."""
    folder = run / TEST
    if not all((folder / n).is_file() for n in (*EVAL_FILES, "report.md")):
        return False
    try:
        created = json.loads((folder / "metrics.json").read_text()).get("model_created")
    except (OSError, ValueError):
        return False
    return created is not None and created == model_created(run / "model.pt")
