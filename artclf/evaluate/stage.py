"""``artclf evaluate --model RUN/model.pt --shards URL [--split test]``: the honest score of a model.

Also ``accelerate launch -m artclf.evaluate …``: each rank reads its own shards and
:func:`artclf.metrics.eval_loop.evaluate` gathers every sample exactly once, so any process count gives
the same ``metrics.json``. Writes into ``--out`` (default ``RUN/eval-<split>/``):

    metrics.json        every number of artclf.metrics.classification, plus split, model and sample
                        counts, and ``intervals``: a percentile bootstrap interval of each score
    predictions.csv     key, true and predicted class, p(predicted), p(true): one row per image
    probabilities.npy   the N×C softmax probabilities, rows in predictions.csv order
    per_class.csv       precision, recall, F1 and support of each class
    confusion_matrix.png, errors.png (the most confident mistakes), learning_curve.png
    reliability.png     accuracy against confidence before and after the model's temperature
    report.md           the run's config, learning curve, metrics and plots on one page

Accuracy, macro F1/precision/recall and top-5 carry a ``--confidence`` (95 %) interval from
``--resamples`` (2,000) seeded resamples of the split's images (:mod:`artclf.metrics.bootstrap`).
Probabilities are calibrated (``model.pt``'s temperature, fitted on val by the trainer);
``metrics.json`` ``calibration`` holds ECE and log loss before (T = 1) and after. ``open_set``
holds the model's "unknown" threshold and the share of this split it rejects; with
``--unseen DIR`` (paintings by artists the model never saw, e.g. ``sample-data --unseen``:
``DATA/unseen``) also the AUROC of known against unseen and the share of unseen it rejects.

The default split is ``test``; the trainer chooses its model on ``val`` and never reads test.
The shard set must hold the model's classes, in its order. A broken shard is skipped and its
samples counted as unreadable; a storage outage is waited out up to ``--storage-patience``;
a worker that yields no batch within ``--data-timeout`` ends the stage, with every thread's
stack on stderr.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from artclf import plots, storage
from artclf.artists import display_names
from artclf.atomic import write_json
from artclf.config import stage_main
from artclf.data import eval_loader, read_info
from artclf.errors import ArtclfError
from artclf.evaluate.config import EvaluateConfig
from artclf.evaluate.report import (
    errors_grid,
    print_summary,
    worst,
    write_per_class,
    write_predictions,
    write_report,
)
from artclf.inference import find_images, probabilities
from artclf.metrics import bootstrap
from artclf.metrics.calibration import SCORE, auroc
from artclf.metrics.classification import ECE_BINS, expected_calibration_error, log_loss
from artclf.metrics.eval_loop import evaluate
from artclf.model import load_model, temperature
from artclf.transforms import Preprocess
from artclf.workers import kill_workers, resolve_workers, workers_phrase


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(EvaluateConfig, run, "artclf evaluate", __doc__, argv)


def run(cfg: EvaluateConfig) -> int:
    acc = Accelerator()
    storage.set_endpoint(cfg.endpoint_url)
    storage.set_patience(cfg.storage_patience)  # before the loader forks its workers: they inherit it
    model, blob = load_model(cfg.model)
    classes = blob["classes"]
    pre = Preprocess.from_dict(blob["preprocess"])
    info = read_info(cfg.shards)
    if info["classes"] != classes:
        where = _first_difference(info["classes"], classes)
        raise ArtclfError(
            f"{cfg.shards} has other classes than {cfg.model}: {where}; "
            "score a model on shards packed from the same artists (its run's --shards)"
        )
    out = cfg.out or cfg.model.parent / f"eval-{cfg.split}"
    workers, why = resolve_workers(cfg.workers)
    acc.print(
        f"artclf evaluate: {cfg.model} on {cfg.shards} split {cfg.split}, "
        f"{acc.num_processes} process(es) on {acc.device}, {pre.image_size} px -> {out}"
    )
    acc.print(f"input: {workers_phrase(workers, why)}")
    rank, world = acc.process_index, acc.num_processes
    batches = eval_loader(info, cfg.split, pre, cfg.batch_size, workers, rank, world, cfg.data_timeout)
    expected = info["splits"][cfg.split]["num_samples"]
    try:
        metrics, preds = evaluate(acc, model.to(acc.device), batches, classes, expected)
    except RuntimeError as e:
        if "DataLoader timed out" not in str(e):
            raise
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)  # where this process waits
        kill_workers()  # a stuck worker ignores SIGTERM: it would hold the exit for seconds
        raise ArtclfError(
            f"{cfg.shards} split {cfg.split}: no batch from a DataLoader worker within --data-timeout "
            f"{cfg.data_timeout:g} s ({e}); the stacks of this process's threads are above"
        ) from None
    acc.end_training()  # the last collective: the main process writes the files alone
    if not acc.is_main_process:
        return 0
    keys, labels, probs = preds["keys"], preds["labels"], preds["probs"]
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"split": cfg.split, "model": str(cfg.model), "shards": cfg.shards, **metrics}
    metrics["world_size"] = acc.num_processes
    metrics["model_created"] = blob.get("created")  # which model.pt this is (model cards check it)
    metrics["calibration"] = _calibration(metrics, preds, temperature(blob), cfg.split, out)
    metrics["open_set"] = open_set_metrics(blob.get("open_set"), probs, cfg, model.to(acc.device), pre)
    # per image: the shards hold one image per duplicate group (dedup's keep), so each image is
    # its own group; bootstrap.weights(groups=…) would draw whole groups of a split that kept them
    metrics["intervals"] = bootstrap.intervals(
        labels,
        probs,
        groups=None,
        resamples=cfg.resamples,
        seed=cfg.bootstrap_seed,
        confidence=cfg.confidence,
    )
    names = display_names(classes, blob.get("artists"))
    write_json(out / "metrics.json", metrics)
    write_predictions(out, keys, labels, probs, classes)
    write_per_class(out / "per_class.csv", metrics["per_class"])
    title = f"{cfg.split}, macro F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f}"
    plots.confusion_matrix(metrics["confusion_matrix"], names, out / "confusion_matrix.png", title)
    mistakes = worst(keys, labels, probs, cfg.errors)
    if mistakes:
        errors_grid(info["splits"][cfg.split]["urls"], mistakes, names, out / "errors.png")
    history = plots.read_history(cfg.model.parent / "history.jsonl")
    if history:
        plots.learning_curve(history, out / "learning_curve.png")
    write_report(out, cfg, metrics, blob, bool(history), bool(mistakes))
    print_summary(cfg, metrics, expected, out)
    return 0


def _calibration(metrics: dict, preds: dict, t: float, split: str, out: Path) -> dict:
    """ECE and log loss before (T = 1) and after the model's temperature; the reliability diagram."""
    labels, probs = preds["labels"], preds["probs"]
    # the model divides by T: undo it for "before"; float32 like the calibrated probabilities, so
    # both are as (in)sensitive to last-bit differences of the logits between world sizes
    raw = torch.softmax(torch.from_numpy(preds["logits"]) * np.float32(t), dim=1).numpy()
    cal = {
        "temperature": t,
        "ece_before": expected_calibration_error(raw, labels),
        "ece_after": metrics["ece"],
        "log_loss_before": log_loss(raw, labels),
        "log_loss_after": metrics["log_loss"],
    }
    plots.reliability(
        {"before (T = 1)": (raw, labels), f"after (T = {t:.2f})": (probs, labels)},
        out / "reliability.png",
        ECE_BINS,
        f"{split}: ECE {cal['ece_before']:.3f} -> {metrics['ece']:.3f}",
    )
    return cal


def _first_difference(shards: list[str], model: list[str]) -> str:
    for i in range(max(len(shards), len(model))):
        a, b = (repr(x[i]) if i < len(x) else "none" for x in (shards, model))
        if a != b:
            return f"class {i}: {a} in the shards, {b} in the model"
    return "none"


def open_set_metrics(open_set: dict | None, probs: np.ndarray, cfg: EvaluateConfig, model, pre) -> dict:
    """The model's "unknown" threshold on this split and, with ``--unseen``, on paintings of
    artists it never saw (AUROC of the score, known = positive; the share rejected, per folder)."""
    known = probs.max(1)
    threshold = open_set["threshold"] if open_set else None
    out = {
        "score": SCORE,
        "threshold": threshold,
        "reject_rate_on_val": open_set["reject_rate"] if open_set else None,
        "known_rejected": float((known < threshold).mean()) if open_set else None,
    }
    if cfg.unseen is None:
        return out
    if not cfg.unseen.is_dir():
        raise ArtclfError(f"--unseen {cfg.unseen}: no such folder")
    scores: dict[str, list[float]] = {}
    for path, _, p in probabilities(model, pre, find_images([cfg.unseen]), cfg.batch_size):
        parts = path.relative_to(cfg.unseen).parts
        who = parts[0] if len(parts) > 1 else "."
        scores.setdefault(who, []).append(float(p.max()))
    unseen = np.array([s for v in scores.values() for s in v])
    if not len(unseen):
        raise ArtclfError(f"--unseen {cfg.unseen}: no readable image in it")
    out.update(unseen=str(cfg.unseen), unseen_n=len(unseen), auroc=auroc(known, unseen))
    if open_set:
        out["unseen_rejected"] = float((unseen < threshold).mean())
        out["unseen_rejected_per_folder"] = {
            k: float((np.array(v) < threshold).mean()) for k, v in scores.items()
        }
    return out
