"""What ``artclf evaluate`` writes besides ``metrics.json``: the predictions, per-class figures,
the most confident mistakes, ``report.md`` and the console summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from artclf import plots
from artclf.atomic import atomic_open
from artclf.config import to_dict
from artclf.data import tar_samples
from artclf.evaluate.config import EvaluateConfig
from artclf.metrics.bootstrap import STATS, interval
from artclf.metrics.classification import ECE_BINS
from artclf.transforms import decode

SCALARS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "top5_accuracy", "confidence", "ece")


def write_predictions(out: Path, keys: list[str], labels: np.ndarray, probs: np.ndarray, classes) -> None:
    pred = probs.argmax(1)
    with atomic_open(out / "predictions.csv", "w") as f:
        w = csv.writer(f)
        w.writerow(["key", "label", "pred", "true_class", "pred_class", "prob", "true_prob"])
        for i, key in enumerate(keys):
            y, p = int(labels[i]), int(pred[i])
            w.writerow([key, y, p, classes[y], classes[p], f"{probs[i, p]:.6g}", f"{probs[i, y]:.6g}"])
    with atomic_open(out / "probabilities.npy", "wb") as f:
        np.save(f, probs.astype(np.float32))


def write_per_class(path: Path, per_class: dict) -> None:
    with atomic_open(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for name, m in per_class.items():
            w.writerow([name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]])


def worst(
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


def scalars_line(metrics: dict) -> str:
    """The console's one-line score: each scalar, its interval where it has one, and n."""
    iv = metrics["intervals"]
    parts = (f"{k} {metrics[k]:.4f}" + (f" {interval(iv[k])}" if k in STATS else "") for k in SCALARS)
    return "  ".join(parts) + f"  (n={metrics['n']})"


def _intervals_phrase(iv: dict, n: int) -> str:
    """How the intervals were drawn; always by image here (see :func:`_write_metrics`)."""
    return (
        f"{100 * iv['confidence']:g} % percentile bootstrap, {iv['resamples']} resamples "
        f"of the {n} images, seed {iv['seed']}"
    )


def print_summary(cfg: EvaluateConfig, metrics: dict, expected: int, out: Path) -> None:
    """The console lines of a finished evaluation (main process)."""
    print(scalars_line(metrics))
    print(f"intervals: {_intervals_phrase(metrics['intervals'], metrics['n'])}")
    cal, ood = metrics["calibration"], metrics["open_set"]
    ece = f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}"
    print(f"calibration: temperature {cal['temperature']:.3f}, {ece}")
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


def _write_metrics(w, metrics: dict) -> None:
    """The score table, with the bootstrap interval of each statistic that has one, and why its
    unit is the image."""
    iv = metrics["intervals"]
    w(f"| metric | value | {100 * iv['confidence']:g} % interval |\n| --- | --- | --- |\n")
    for k in (*SCALARS, "log_loss"):
        w(f"| {k} | {metrics[k]:.4f} | {interval(iv[k]) if k in STATS else ''} |\n")
    w(f"\nIntervals: {_intervals_phrase(iv, metrics['n'])} (`metrics.json` `intervals`). ")
    w("Why per image: the split keeps one image per duplicate group (dedup drops the copies), so ")
    w("each image is its own group; `artclf.metrics.bootstrap.weights(groups=...)` resamples whole ")
    w("groups for a split that keeps them.\n")


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


def write_report(
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
    _write_metrics(w, metrics)
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
