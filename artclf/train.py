"""``accelerate launch -m artclf.train --shards URL --run RUN``: train the painter classifier.

Defaults reproduce the published recipe: torchvision ResNet50 (IMAGENET1K_V2), 512 px,
global batch 64, 15 epochs, loss 0.3·CE + 0.7·soft-F1, horizontal flips for the smaller
classes. Process count and mixed precision come from ``accelerate launch`` (or its config
file), not from here. Restarting the same command resumes from the newest ``RUN/state``.
SIGTERM or SIGUSR1 on any rank: every rank stops at the next step, saves, and exits 75.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from artclf import checkpoint, plots, storage
from artclf.atomic import write_json, write_jsonl
from artclf.config import arg, stage_main, strings, to_dict
from artclf.data import eval_loader, read_info, steps_per_epoch, train_loader
from artclf.engine import evaluate, lr_at, train_one_epoch
from artclf.errors import ArtclfError
from artclf.model import build_model, save_model
from artclf.preemption import EXIT_PREEMPTED, Preemption
from artclf.transforms import Preprocess

BASE_BATCH = 64  # --lr is for this global batch; it scales linearly with the global batch


@dataclass(frozen=True)
class TrainConfig:
    shards: str = field(metadata=arg("shard set: folder or s3://bucket/prefix (with _info.json)"))
    run: Path = field(metadata=arg("run folder: config, state/, tb/, history.jsonl, model.pt"))
    arch: str = field(default="resnet50", metadata=arg("torchvision classification model"))
    weights: str = field(
        default="IMAGENET1K_V2", metadata=arg("torchvision weights name, a local file, or none")
    )
    image_size: int = field(default=512, metadata=arg("px, square model input"))
    batch_size: int = field(
        default=64, metadata=arg("GLOBAL batch per optimizer step (all GPUs × accumulation)")
    )
    epochs: int = field(default=15, metadata=arg("passes over the train split"))
    lr: float = field(default=3e-4, metadata=arg(f"AdamW peak learning rate at global batch {BASE_BATCH}"))
    weight_decay: float = field(default=0.05, metadata=arg("AdamW weight decay (not on norms and biases)"))
    warmup_epochs: float = field(default=1.0, metadata=arg("linear warm-up, in epochs"))
    ce_weight: float = field(default=0.3, metadata=arg("weight of cross-entropy in the loss"))
    f1_weight: float = field(default=0.7, metadata=arg("weight of macro soft-F1 (global batch) in the loss"))
    flip_classes: str = field(
        default="small",
        metadata=arg("classes flipped at random: small (below the median count), all, none, or names"),
    )
    workers: int = field(default=8, metadata=arg("DataLoader workers per GPU"))
    seed: int = field(default=0, metadata=arg("seeds weights of the head, data order and augmentation"))
    save_every: int = field(
        default=0, metadata=arg("also save state every N optimizer steps (0: per epoch only)")
    )
    keep_last: int = field(default=3, metadata=arg("checkpoints kept in RUN/state"))
    grad_accum: int = field(default=1, metadata=arg("micro-batches per optimizer step"))
    clip_grad: float = field(default=1.0, metadata=arg("max gradient norm (0 disables)"))
    channels_last: bool = field(default=True, metadata=arg("channels-last memory format (GPU only)"))
    compile: bool = field(default=False, metadata=arg("torch.compile the model"))
    sync_bn: bool = field(default=False, metadata=arg("SyncBatchNorm across GPUs"))
    log_every: int = field(default=10, metadata=arg("optimizer steps between log lines / TensorBoard points"))
    endpoint_url: str | None = field(default=None, metadata=arg("S3 endpoint (default: AWS_ENDPOINT_URL)"))

    def __post_init__(self) -> None:
        if (
            min(
                self.batch_size, self.epochs, self.grad_accum, self.keep_last, self.log_every, self.image_size
            )
            < 1
        ):
            raise ValueError(
                "--batch-size, --epochs, --grad-accum, --keep-last, --log-every, --image-size: >= 1"
            )
        if self.ce_weight < 0 or self.f1_weight < 0 or self.ce_weight + self.f1_weight == 0:
            raise ValueError("--ce-weight and --f1-weight must be >= 0 and not both 0")


def flip_set(spec: str, classes: list[str], counts: list[int]) -> frozenset[int]:
    """Class indices to flip: ``small`` = fewer train images than the median class."""
    if spec == "none":
        return frozenset()
    if spec == "all":
        return frozenset(range(len(classes)))
    if spec == "small":
        median = sorted(counts)[len(counts) // 2]
        return frozenset(i for i, c in enumerate(counts) if c < median)
    unknown = [n for n in strings(spec) if n not in classes]
    if unknown:
        raise ArtclfError(f"--flip-classes: unknown class(es) {unknown}; names are {classes[:3]}…")
    return frozenset(classes.index(n) for n in strings(spec))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]  # norms, biases
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main(TrainConfig, run, "artclf train", __doc__, argv)


def run(cfg: TrainConfig) -> int:
    acc = Accelerator()
    stop = Preemption()
    set_seed(cfg.seed)
    storage.set_endpoint(cfg.endpoint_url)
    info = read_info(cfg.shards)
    classes = info["classes"]
    world = acc.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ArtclfError(
            f"--batch-size {cfg.batch_size} is the global batch; it must divide by "
            f"processes × --grad-accum = {world} × {cfg.grad_accum}"
        )
    per_device = cfg.batch_size // (world * cfg.grad_accum)
    steps = steps_per_epoch(info["splits"]["train"]["num_samples"], 1, cfg.batch_size)  # optimizer steps
    total, warmup = steps * cfg.epochs, round(steps * cfg.warmup_epochs)
    peak_lr = cfg.lr * cfg.batch_size / BASE_BATCH
    pre = Preprocess(image_size=cfg.image_size, resize=cfg.image_size)
    flips = flip_set(cfg.flip_classes, classes, info["splits"]["train"]["class_counts"])

    model = build_model(cfg.arch, cfg.weights, len(classes), pre)
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last and acc.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(model, peak_lr, cfg.weight_decay)
    model, optimizer = acc.prepare(model, optimizer)
    state = checkpoint.TrainState()
    acc.register_for_checkpointing(state)
    resume = checkpoint.latest(cfg.run / "state")
    if resume is not None:
        acc.load_state(str(resume))
    if acc.is_main_process:
        cfg.run.mkdir(parents=True, exist_ok=True)
        write_json(
            cfg.run / "config.json",
            {
                "config": to_dict(cfg),
                "derived": derived(
                    acc, per_device, steps, total, warmup, peak_lr, flips, classes, info, resume
                ),
                "versions": versions(),
            },
        )
        print_derived(acc, cfg, per_device, steps, peak_lr, flips, resume, state)
    writer = _writer(acc, cfg.run)
    history = plots.read_history(cfg.run / "history.jsonl")[: state.epoch]

    def save_state() -> None:
        checkpoint.save(acc, cfg.run / "state", state.step, cfg.keep_last)

    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.perf_counter()
        remaining = steps - state.step_in_epoch
        # a resumed epoch reads a fresh stream (seeded by where it resumes) for the steps left
        # (none left when a step checkpoint landed on the epoch's last step: go on to evaluation)
        batches = (
            train_loader(
                info,
                pre,
                per_device,
                cfg.workers,
                acc.process_index,
                world,
                epoch,
                cfg.seed * 1_000_003 + state.step_in_epoch,
                flips,
                steps=remaining * cfg.grad_accum,
            )
            if remaining > 0
            else []
        )
        out = train_one_epoch(
            acc,
            model,
            optimizer,
            batches,
            num_classes=len(classes),
            ce_weight=cfg.ce_weight,
            f1_weight=cfg.f1_weight,
            grad_accum=cfg.grad_accum,
            clip_grad=cfg.clip_grad,
            lr_of_step=lambda s: lr_at(s, total, warmup, peak_lr),
            state=state,
            stop_requested=lambda: stop.requested,
            on_log=lambda row: _log(writer, "train", row, state.step),
            on_save=save_state,
            save_every=cfg.save_every,
            log_every=cfg.log_every,
            total_steps=steps,
        )
        if out["preempted"]:
            save_state()
            acc.print(
                f"preempted at step {state.step} (epoch {epoch + 1}): state saved, exit {EXIT_PREEMPTED}"
            )
            acc.end_training()
            return EXIT_PREEMPTED
        val, _ = evaluate(
            acc,
            model,
            eval_loader(info, "val", pre, per_device, cfg.workers, acc.process_index, world),
            classes,
            info["splits"]["val"]["num_samples"],
        )
        state.epoch, state.step_in_epoch = epoch + 1, 0
        if acc.is_main_process:
            row = _epoch_row(epoch + 1, state.step, out, val, time.perf_counter() - t0)
            history.append(row)
            write_jsonl(cfg.run / "history.jsonl", history)
            _log(writer, "val", {k[4:]: v for k, v in row.items() if k.startswith("val_")}, state.step)
            if val["macro_f1"] > state.best_f1:
                state.best_f1, state.best_epoch = val["macro_f1"], epoch + 1
                save_model(
                    cfg.run / "model.pt",
                    acc.unwrap_model(model),
                    classes,
                    pre,
                    cfg.arch,
                    {"config": to_dict(cfg), "epoch": epoch + 1, "val": _scalars(val)},
                )
                write_json(cfg.run / "val_metrics.json", val)
                _confusion(writer, cfg.run, classes, epoch + 1, state.step)
            plots.learning_curve(
                plots.read_history(cfg.run / "history.jsonl"), cfg.run / "learning_curve.png"
            )
            acc.print(
                f"epoch {epoch + 1}/{cfg.epochs}: "
                + ", ".join(
                    f"{k} {row[k]:.4g}"
                    for k in ("train_loss", "val_accuracy", "val_macro_f1", "images_per_s")
                )
            )
        state.best_f1 = _broadcast(acc, state.best_f1)
        save_state()
    if acc.is_main_process:
        _hparams(writer, cfg, history)
        writer.close()
        acc.print(
            f"done: best val macro F1 {state.best_f1:.4f} at epoch {state.best_epoch} "
            f"-> {cfg.run / 'model.pt'}"
        )
    acc.end_training()
    return 0


def _broadcast(acc: Accelerator, value: float) -> float:
    from accelerate.utils import broadcast

    return float(broadcast(torch.tensor([value], device=acc.device)).item())


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def _epoch_row(epoch: int, step: int, out: dict, val: dict, seconds: float) -> dict:
    row = {"epoch": epoch, "step": step, "seconds": round(seconds, 2)}
    row.update({k: v for k, v in out.items() if k != "preempted"})
    row.update({f"val_{k}": v for k, v in _scalars(val).items()})
    return row


def _writer(acc: Accelerator, run: Path):
    if not acc.is_main_process:  # one event file: TensorBoard on the main process only
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run / "tb"))


def _log(writer, prefix: str, row: dict, step: int) -> None:
    if writer is None:
        return
    for k, v in row.items():
        if isinstance(v, int | float):
            writer.add_scalar(f"{prefix}/{k}", v, step)
    writer.flush()


def _confusion(writer, run: Path, classes: list[str], epoch: int, step: int) -> None:
    """confusion_matrix.png from val_metrics.json (the file, not memory), also into TensorBoard."""
    import numpy as np
    from PIL import Image

    val = json.loads((run / "val_metrics.json").read_text())
    title = f"val, epoch {epoch}, macro F1 {val['macro_f1']:.3f}"
    plots.confusion_matrix(val["confusion_matrix"], classes, run / "confusion_matrix.png", title)
    with Image.open(run / "confusion_matrix.png") as im:
        writer.add_image("val/confusion_matrix", np.asarray(im.convert("RGB")), step, dataformats="HWC")


def _hparams(writer, cfg: TrainConfig, history: list[dict]) -> None:
    """Hyper-parameters and final metrics into the same event file (add_hparams would add one)."""
    from torch.utils.tensorboard.summary import hparams

    params = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in to_dict(cfg).items()}
    best = max(history, key=lambda h: h["val_macro_f1"]) if history else {}
    metrics = {
        "hparam/val_macro_f1": best.get("val_macro_f1", 0.0),
        "hparam/val_accuracy": best.get("val_accuracy", 0.0),
    }
    for summary in hparams(params, metrics):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v)


def derived(acc, per_device, steps, total, warmup, peak_lr, flips, classes, info, resume) -> dict:
    return {
        "world_size": acc.num_processes,
        "per_device_batch": per_device,
        "steps_per_epoch": steps,
        "total_steps": total,
        "warmup_steps": warmup,
        "peak_lr": peak_lr,
        "device": str(acc.device),
        "mixed_precision": acc.mixed_precision,
        "flip_classes": sorted(classes[i] for i in flips),
        "train_samples": info["splits"]["train"]["num_samples"],
        "resumed_from": str(resume) if resume else None,
    }


def print_derived(acc, cfg, per_device, steps, peak_lr, flips, resume, state) -> None:
    acc.print(
        f"artclf train: {acc.num_processes} process(es) on {acc.device} ({acc.mixed_precision}), "
        f"global batch {cfg.batch_size} = {per_device} per device × {acc.num_processes} × {cfg.grad_accum} "
        f"accumulation, {steps} steps/epoch, peak lr {peak_lr:.3g}, {cfg.arch} ({cfg.weights}) at "
        f"{cfg.image_size} px, flips for {len(flips)} classes, data {cfg.shards}"
    )
    if resume:
        acc.print(f"resuming from {resume}: epoch {state.epoch + 1}, step {state.step}")


def versions() -> dict:
    import accelerate
    import torchvision

    from artclf import __version__

    sha = None
    try:
        import subprocess

        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except OSError:
        pass
    return {
        "artclf": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "accelerate": accelerate.__version__,
        "python": sys.version.split()[0],
        "git_sha": sha,
        "host": os.uname().nodename,
    }


if __name__ == "__main__":
    raise SystemExit(main())
