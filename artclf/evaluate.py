"""``artclf evaluate --model RUN/model.pt --shards URL [--split test]``: the honest score of a model.

Also ``accelerate launch -m artclf.evaluate …``: each rank reads its own shards and
:func:`artclf.metrics.eval_loop.evaluate` gathers every sample exactly once, so any process count gives
the same ``metrics.json``. Writes into ``--out`` (default ``RUN/eval-<split>/``):

    metrics.json        every number of artclf.metrics.classification, plus split, model and sample counts
    predictions.csv     key, true and predicted class, p(predicted), p(true): one row per image
    probabilities.npy   the N×C softmax probabilities, rows in predictions.csv order
    per_class.csv       precision, recall, F1 and support of each class
    confusion_matrix.png, errors.png (the most confident mistakes), learning_curve.png
    reliability.png     accuracy against confidence before and after the model's temperature
    report.md           the run's config, learning curve, metrics and plots on one page

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

import csv
import faulthandler
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from artclf import plots, storage
from artclf.artists import display_names
from artclf.atomic import atomic_open, write_json
from artclf.config import arg, stage_main, to_dict
from artclf.data import eval_loader, read_info, tar_samples
from artclf.errors import ArtclfError
from artclf.inference import find_images, probabilities
from artclf.metrics.calibration import SCORE, auroc
from artclf.metrics.classification import ECE_BINS, expected_calibration_error, log_loss
from artclf.metrics.eval_loop import evaluate
from artclf.model import load_model, temperature
from artclf.transforms import Preprocess, decode
from artclf.workers import (
    WORKERS_HELP,
    check_workers,
    kill_workers,
    parse_workers,
    resolve_workers,
    workers_phrase,
)

SCALARS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "top5_accuracy", "confidence", "ece")


@dataclass(frozen=True)
class EvaluateConfig:
    model: Path = field(metadata=arg("model.pt written by artclf train"))
    shards: str = field(metadata=arg("shard set: folder or s3://bucket/prefix (with _info.json)"))
    split: str = field(default="test", metadata=arg("split to score (the trainer chose its model on val)"))
    out: Path | None = field(default=None, metadata=arg("output folder (default: RUN/eval-<split>/)"))
    batch_size: int = field(default=64, metadata=arg("images per batch, per process"))
    workers: int | str = field(default="auto", metadata=arg(WORKERS_HELP, parse=parse_workers))
    errors: int = field(default=16, metadata=arg("misclassified images in errors.png (0 disables)"))
    unseen: Path | None = field(
        default=None,
        metadata=arg("folder of paintings by artists the model never saw: open-set AUROC and rejection"),
    )
    endpoint_url: str | None = field(default=None, metadata=arg("S3 endpoint (default: AWS_ENDPOINT_URL)"))
    storage_patience: float = field(
        default=storage.DEFAULT_PATIENCE_S,
        metadata=arg(
            "seconds each read waits out a storage outage (unreachable endpoint, 5xx, throttling) before "
            "the stage fails; a broken shard is skipped and counted at once, a refusal fails at once"
        ),
    )
    data_timeout: float = field(
        default=1200.0,
        metadata=arg(
            "seconds to wait for one batch from a DataLoader worker (0: forever); must exceed "
            "--storage-patience. On a timeout every thread's stack goes to stderr"
        ),
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.errors < 0:
            raise ValueError("--batch-size must be >= 1, --errors >= 0")
        check_workers(self.workers)
        if self.storage_patience < 0 or self.data_timeout < 0:
            raise ValueError("--storage-patience and --data-timeout must be >= 0 seconds")
        storage.check_outlasts(self.storage_patience, data_timeout=self.data_timeout)


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
    t = temperature(blob)
    # the model divides by T: undo it for "before"; float32 like the calibrated probabilities, so
    # both are as (in)sensitive to last-bit differences of the logits between world sizes
    raw = torch.softmax(torch.from_numpy(preds["logits"]) * np.float32(t), dim=1).numpy()
    metrics["calibration"] = {
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
        f"{cfg.split}: ECE {metrics['calibration']['ece_before']:.3f} -> {metrics['ece']:.3f}",
    )
    metrics["open_set"] = open_set_metrics(blob.get("open_set"), probs, cfg, model.to(acc.device), pre)
    names = display_names(classes, blob.get("artists"))
    write_json(out / "metrics.json", metrics)
    _write_predictions(out, keys, labels, probs, classes)
    _write_per_class(out / "per_class.csv", metrics["per_class"])
    title = f"{cfg.split}, macro F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f}"
    plots.confusion_matrix(metrics["confusion_matrix"], names, out / "confusion_matrix.png", title)
    worst = _worst(keys, labels, probs, cfg.errors)
    if worst:
        errors_grid(info["splits"][cfg.split]["urls"], worst, names, out / "errors.png")
    history = plots.read_history(cfg.model.parent / "history.jsonl")
    if history:
        plots.learning_curve(history, out / "learning_curve.png")
    _write_report(out, cfg, metrics, blob, bool(history), bool(worst))
    print("  ".join(f"{k} {metrics[k]:.4f}" for k in SCALARS) + f"  (n={metrics['n']})")
    cal, ood = metrics["calibration"], metrics["open_set"]
    print(f"calibration: temperature {t:.3f}, ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
    if ood:
        line = (
            f"open set: threshold {ood['threshold']:.4f} rejects {ood['known_rejected']:.1%} of {cfg.split}"
        )
        if "auroc" in ood:
            line += f", {ood['unseen_rejected']:.1%} of {ood['unseen_n']} unseen; AUROC {ood['auroc']:.4f}"
        print(line)
    if metrics["skipped_samples"]:
        print(
            f"artclf evaluate: warning: {metrics['skipped_samples']} of {expected} samples unreadable, "
            f"not scored: {'; '.join(metrics['unreadable'][:5])}"
        )
    print(f"report: {out / 'report.md'}")
    return 0


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


def _write_predictions(out: Path, keys: list[str], labels: np.ndarray, probs: np.ndarray, classes) -> None:
    pred = probs.argmax(1)
    with atomic_open(out / "predictions.csv", "w") as f:
        w = csv.writer(f)
        w.writerow(["key", "label", "pred", "true_class", "pred_class", "prob", "true_prob"])
        for i, key in enumerate(keys):
            y, p = int(labels[i]), int(pred[i])
            w.writerow([key, y, p, classes[y], classes[p], f"{probs[i, p]:.6g}", f"{probs[i, y]:.6g}"])
    with atomic_open(out / "probabilities.npy", "wb") as f:
        np.save(f, probs.astype(np.float32))


def _write_per_class(path: Path, per_class: dict) -> None:
    with atomic_open(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for name, m in per_class.items():
            w.writerow([name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]])


def _worst(
    keys: list[str], labels: np.ndarray, probs: np.ndarray, n: int
) -> list[tuple[str, int, int, float]]:
    """The ``n`` most confident mistakes: (key, true, predicted, p(predicted))."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    return [(keys[i], int(labels[i]), int(pred[i]), float(probs[i, pred[i]])) for i in wrong]


def errors_grid(urls: list[str], worst: list[tuple], classes: list[str], path: Path) -> None:
    """The images of ``worst`` re-read from the split's shards (one pass, only their JPEGs decoded;
    a shard that cannot be read is skipped, as in the scoring pass)."""
    wanted = {w[0] for w in worst}
    found: dict[str, torch.Tensor] = {}
    for sample in tar_samples({"url": u} for u in urls):
        if sample["__key__"] in wanted and "__error__" not in sample:
            found[sample["__key__"]] = decode(sample["jpg"])
            if len(found) == len(wanted):
                break
    plt = plots.pyplot()
    cols = min(4, len(worst))
    rows = -(-len(worst) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (key, y, p, prob) in zip(axes.flat, worst, strict=False):
        if key in found:
            ax.imshow(found[key].permute(1, 2, 0).numpy())
        ax.set_title(f"true: {classes[y]}\npred: {classes[p]} ({prob:.2f})", fontsize=8)
    fig.suptitle("most confident mistakes")
    plots.save(fig, path)


def _write_calibration(w, cfg: EvaluateConfig, metrics: dict, blob: dict) -> None:
    cal, ood = metrics["calibration"], metrics["open_set"]
    fitted = blob.get("calibration")
    w("\n## Calibration\n\n")
    if fitted:
        w(f"Temperature T = {cal['temperature']:.3f}, fitted on val ({fitted['n']} images) by the trainer. ")
    else:
        w("This model has no fitted temperature (T = 1): its confidence is not calibrated. ")
    w(f"On {cfg.split}: ECE ({ECE_BINS} bins) {cal['ece_before']:.4f} before, **{cal['ece_after']:.4f}** ")
    w(f"after; log loss {cal['log_loss_before']:.4f} before, {cal['log_loss_after']:.4f} after.\n\n")
    w("![reliability diagram](reliability.png)\n\n## None of these artists\n\n")
    if ood["threshold"] is None:
        w("This model has no open-set threshold (trained before artclf stored one).\n")
    else:
        w(f"Answer `unknown` when the calibrated max probability is below {ood['threshold']:.4f} ")
        w(f"(chosen to reject {ood['reject_rate_on_val']:.0%} of val); it rejects ")
        w(f"{ood['known_rejected']:.1%} of this split's paintings by known artists.")
    if "auroc" in ood:
        w(f"\n\nOn {ood['unseen_n']} paintings by artists the model never saw (`{ood['unseen']}`): ")
        w(f"AUROC known vs unseen **{ood['auroc']:.4f}**")
        if "unseen_rejected" in ood:
            w(f", rejected {ood['unseen_rejected']:.1%}.\n\n| unseen folder | rejected |\n| --- | --- |\n")
            for k, v in ood["unseen_rejected_per_folder"].items():
                w(f"| {k} | {v:.1%} |\n")
        else:
            w(".\n")
    w("\n")


def _write_effective(w, flags: dict, derived: dict | None) -> None:
    """What the flags became on the run's processes (config.json's ``derived``): ``--lr`` is for
    a global batch of 64 and scales with the global batch, ``--workers auto`` is a count."""
    if not derived:
        return
    world, per = derived["world_size"], derived["per_device_batch"]
    accum = flags.get("grad_accum", 1)
    w("What the flags became on the run's processes (config.json `derived`), then the flags as given.\n\n")
    w("| effective value | |\n| --- | --- |\n")
    w(f"| peak learning rate (effective) | `{derived['peak_lr']:.3g}` |\n")
    w(f"| global batch | `{flags.get('batch_size')}` = {per} per device × {world} ")
    w(f"process{'es' if world > 1 else ''} × {accum} accumulation |\n")
    if "workers" in derived:  # runs before --workers auto did not record it
        w(f"| DataLoader workers per process | `{derived['workers']}` |\n")
    w("\n")


def _write_report(
    out: Path, cfg: EvaluateConfig, metrics: dict, blob: dict, curve: bool, errors: bool
) -> None:
    run_cfg = cfg.model.parent / "config.json"
    record = json.loads(run_cfg.read_text()) if run_cfg.is_file() else {"config": blob.get("config", {})}
    recipe = record["config"]
    buf = io.StringIO()
    w = buf.write
    w(f"# Evaluation of `{cfg.model}` on the {cfg.split} split\n\n")
    w(f"{metrics['n']} images from `{cfg.shards}`, {metrics['skipped_samples']} unreadable; ")
    w(f"model from epoch {blob.get('epoch', '?')} (chosen on val macro F1).\n\n")
    if metrics["unreadable"]:
        what = "; ".join(metrics["unreadable"])
        w(f"**Not scored** ({metrics['skipped_samples']} samples): {what}\n\n")
    w("| metric | value |\n| --- | --- |\n")
    for k in (*SCALARS, "log_loss"):
        w(f"| {k} | {metrics[k]:.4f} |\n")
    _write_calibration(w, cfg, metrics, blob)
    w("\n![confusion matrix](confusion_matrix.png)\n\n")
    if errors:
        w("## Most confident mistakes\n\n![errors](errors.png)\n\n")
    if curve:
        w("## Learning curve\n\n![learning curve](learning_curve.png)\n\n")
    w("Per class: [per_class.csv](per_class.csv); every prediction: [predictions.csv](predictions.csv).\n\n")
    w("## Run config\n\n")
    _write_effective(w, recipe, record.get("derived"))
    w("| flag | value |\n| --- | --- |\n")
    for k, v in recipe.items():
        w(f"| {k} | `{v}` |\n")
    w(f"\nEvaluation settings: `{json.dumps(to_dict(cfg))}`\n")
    with atomic_open(out / "report.md", "w") as f:
        f.write(buf.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
