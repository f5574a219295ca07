"""What a training run writes about itself besides checkpoints: the ``derived`` and
``versions`` blocks of ``config.json``, the start-up lines, TensorBoard (main process only) and
``batches.jsonl`` (``--record-batches``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from artclf import plots
from artclf.atomic import write_jsonl
from artclf.config import to_dict
from artclf.workers import workers_phrase


def scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def epoch_row(epoch: int, step: int, out: dict, val: dict | None, seconds: float) -> dict:
    """A line of ``history.jsonl``; ``val_*`` only for epochs that evaluated (``--eval-every``)."""
    row = {"epoch": epoch, "step": step, "seconds": round(seconds, 2)}
    row.update({k: v for k, v in out.items() if k != "preempted"})
    row.update({f"val_{k}": v for k, v in scalars(val or {}).items()})
    return row


def epoch_line(row: dict, epochs: int) -> str:
    """The console line of an epoch: loss, val figures when evaluated, throughput (steady state
    beside the whole epoch, which includes start-up)."""
    parts = [f"train_loss {row['train_loss']:.4g}"]
    if "val_accuracy" in row:
        parts += [f"val_accuracy {row['val_accuracy']:.4g}", f"val_macro_f1 {row['val_macro_f1']:.4g}"]
    steady = row.get("images_per_s_steady")
    wait = row.get("data_wait_steady")
    if steady is not None:
        parts.append(f"{steady:.1f} img/s steady (data wait {100 * wait:.1f} %)")
    if row.get("images_per_s") is not None:
        parts.append(
            f"{row['images_per_s']:.1f} img/s with start-up (data wait {100 * row['data_wait']:.1f} %)"
        )
    return f"epoch {row['epoch']}/{epochs}: " + ", ".join(parts)


def writer_for(acc: Accelerator, run: Path, purge_step: int | None = None):
    """The run's TensorBoard writer (main process only: one event file). ``purge_step``: a resumed
    run's first step; TensorBoard hides the points at or after it that an earlier writer of the
    folder logged (a run killed after its last checkpoint), so each tag keeps one curve."""
    if not acc.is_main_process:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run / "tb"), purge_step=purge_step)


def log_scalars(writer, prefix: str, row: dict, step: int) -> None:
    if writer is None:
        return
    for k, v in row.items():
        if isinstance(v, int | float):
            writer.add_scalar(f"{prefix}/{k}", v, step)
    writer.flush()


def confusion(writer, run: Path, classes: list[str], epoch: int, step: int) -> None:
    """confusion_matrix.png from val_metrics.json (the file, not memory), also into TensorBoard."""
    import numpy as np
    from PIL import Image

    val = json.loads((run / "val_metrics.json").read_text())
    title = f"val, epoch {epoch}, macro F1 {val['macro_f1']:.3f}"
    plots.confusion_matrix(val["confusion_matrix"], classes, run / "confusion_matrix.png", title)
    with Image.open(run / "confusion_matrix.png") as im:
        writer.add_image("val/confusion_matrix", np.asarray(im.convert("RGB")), step, dataformats="HWC")


def hparams_summary(writer, cfg, history: list[dict]) -> None:
    """Hyper-parameters and final metrics into the same event file (add_hparams would add one)."""
    from torch.utils.tensorboard.summary import hparams

    params = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in to_dict(cfg).items()}
    evaluated = [h for h in history if "val_macro_f1" in h]
    best = max(evaluated, key=lambda h: h["val_macro_f1"]) if evaluated else {}
    metrics = {
        "hparam/val_macro_f1": best.get("val_macro_f1", 0.0),
        "hparam/val_accuracy": best.get("val_accuracy", 0.0),
    }
    for summary in hparams(params, metrics):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v)


def node_name() -> str:
    """The node this process runs on: SLURM's name for it, else the host name (a pod's name on
    Kubernetes). The nodes of a local test cluster share one host name, not their SLURM names."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def placement(acc) -> dict:
    """Where the processes run: the nodes, and rank, local rank, node and pid of each process in
    rank order. Collective: every rank calls it."""
    from accelerate.utils import gather_object

    me = {
        "rank": acc.process_index,
        "local_rank": acc.local_process_index,
        "node": node_name(),
        "pid": os.getpid(),
    }
    ranks = sorted(gather_object([me]), key=lambda r: r["rank"])
    return {"nodes": sorted({r["node"] for r in ranks}), "ranks": ranks}


def derived(
    acc, per_device, steps, total, warmup, peak_lr, flips, classes, info, resume, sync_bn, workers
) -> dict:
    """config.json's ``derived`` block: what the flags became on these processes (the effective
    values; ``config`` keeps the flags as given, e.g. ``--workers auto``)."""
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
        "sync_bn": sync_bn[0],
        "workers": workers[0],  # per process, resolved from --workers (auto: the reason beside it)
        "workers_reason": workers[1],
    }


def print_derived(
    acc, cfg, per_device, steps, peak_lr, flips, resume, state, sync_bn, where, workers
) -> None:
    acc.print(
        f"artclf train: {acc.num_processes} process(es) on {acc.device}, "
        f"mixed precision: {acc.mixed_precision}, "
        f"global batch {cfg.batch_size} = {per_device} per device × {acc.num_processes} × {cfg.grad_accum} "
        f"accumulation, {steps} steps/epoch, peak lr {peak_lr:.3g}, {cfg.arch} ({cfg.weights}) at "
        f"{cfg.image_size} px, flips for {len(flips)} classes, data {cfg.shards}"
    )
    acc.print(
        f"SyncBatchNorm {'on' if sync_bn[0] else 'off'}: {sync_bn[1]}; collective timeout "
        f"{cfg.ddp_timeout} s (--ddp-timeout), batch wait {cfg.data_timeout:g} s (--data-timeout), "
        f"run lock {cfg.run / '.lock'}"
    )
    where_decoded = "on the GPU (--gpu-decode)" if cfg.gpu_decode else "in the workers"
    acc.print(
        f"input: {workers_phrase(*workers)}, JPEGs decoded {where_decoded}; all-rank stop/NaN "
        f"check every {cfg.check_every} steps, val every {cfg.eval_every} epoch(s) and after the last"
    )
    acc.print("ranks on nodes: " + ", ".join(f"{r['rank']}@{r['node']}" for r in where["ranks"]))
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


class BatchRecord:
    """``RUN/batches.jsonl`` (``--record-batches``): per optimizer step, the sha256 of the global
    batch's (sample key, augmentation seed) pairs in order (micro-batch, then rank), so two runs
    can be compared step by step whatever their world size or workers. Every rank calls it (one
    gather per step); the main process writes. A resumed run first drops the rows after the step
    it resumes at (written by the run it replaces after its last checkpoint)."""

    def __init__(self, acc, path: Path, resumed_step: int) -> None:
        self.acc, self.path = acc, path
        if acc.is_main_process:
            rows = [r for r in plots.read_history(path) if r["step"] <= resumed_step] if resumed_step else []
            write_jsonl(path, rows)

    def __call__(self, state, batches: list) -> None:
        from accelerate.utils import gather_object

        mine = [[[k, a] for k, a in zip(b.keys, b.aug, strict=True)] for b in batches]
        everyone = gather_object([mine])
        if self.acc.is_main_process:
            pairs = [p for j in range(len(mine)) for rank in everyone for p in rank[j]]
            row = {
                "step": state.step,
                "epoch": state.epoch + 1,
                "samples": len(pairs),
                "sha256": hashlib.sha256(json.dumps(pairs).encode()).hexdigest(),
            }
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
