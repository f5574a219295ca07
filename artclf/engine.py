"""One epoch of training, and exact evaluation across ranks.

Both take what they need as arguments; the run's shape (epochs, checkpoints, logging to
files) lives in ``train.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm

from artclf.errors import ArtclfError
from artclf.losses import combined_loss
from artclf.metrics import classification_metrics


def lr_at(step: int, total: int, warmup: int, peak: float, floor_ratio: float = 0.01) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine down to ``floor_ratio·peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_one_epoch(
    acc: Accelerator,
    model,
    optimizer,
    batches: Iterable,
    *,
    num_classes: int,
    ce_weight: float,
    f1_weight: float,
    grad_accum: int,
    clip_grad: float,
    lr_of_step: Callable[[int], float],
    state,
    stop_requested: Callable[[], bool],
    on_log: Callable[[dict], None],
    on_save: Callable[[], None],
    save_every: int,
    log_every: int,
    total_steps: int,
) -> dict:
    """Optimizer steps over ``batches`` (``grad_accum`` micro-batches each). Returns the epoch's
    means and ``preempted=True`` when a stop was requested on any rank (state saved by caller)."""
    model.train()
    sums = {"loss": 0.0, "ce": 0.0, "soft_f1": 0.0, "images": 0, "wait": 0.0, "busy": 0.0, "failed": 0}
    bar = tqdm(
        total=total_steps,
        initial=state.step_in_epoch,
        disable=not acc.is_main_process,
        desc=f"epoch {state.epoch + 1}",
        unit="step",
        mininterval=2.0,
    )
    micro, t_end, finite = 0, time.perf_counter(), True
    for batch in batches:
        t_data = time.perf_counter()
        sums["wait"] += t_data - t_end
        sums["failed"] += batch.lost
        x = batch.images.to(acc.device, non_blocking=True)
        y = batch.labels.to(acc.device, non_blocking=True)
        # between optimizer steps, skip DDP's gradient all-reduce (it runs on the last micro-batch)
        with acc.no_sync(model) if (micro + 1) % grad_accum else nullcontext():
            with acc.autocast():
                logits = model(x)
            loss, parts = combined_loss(logits, y, num_classes, ce_weight=ce_weight, f1_weight=f1_weight)
            acc.backward(loss / grad_accum)
        micro += 1
        sums["images"] += len(y)
        for k in ("ce", "soft_f1"):
            sums[k] += float(parts[k]) * len(y)
        loss_value = float(loss.detach())
        finite = finite and math.isfinite(loss_value)  # any micro-batch of the step
        sums["loss"] += loss_value * len(y)
        if micro % grad_accum:
            t_end = time.perf_counter()
            sums["busy"] += t_end - t_data
            continue
        _check_finite(acc, finite, state)  # before the step: no NaN reaches the weights
        finite = True
        for g in optimizer.param_groups:
            g["lr"] = lr_of_step(state.step)
        if clip_grad > 0:
            acc.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.step_in_epoch += 1
        bar.update(1)
        t_end = time.perf_counter()
        sums["busy"] += t_end - t_data
        if state.step % log_every == 0:
            on_log(
                {
                    "loss": float(loss.detach()),
                    "ce": float(parts["ce"]),
                    "soft_f1": float(parts["soft_f1"]),
                    "lr": optimizer.param_groups[0]["lr"],
                    **_rates(sums, acc.num_processes),
                }
            )
        if stop_requested():
            acc.set_trigger()
        if acc.check_trigger():  # any rank's SIGTERM/SIGUSR1 reaches every rank here
            bar.close()
            return {"preempted": True}
        if save_every and state.step % save_every == 0:
            on_save()
    bar.close()
    n = max(1, sums["images"])
    return {
        "preempted": False,
        "train_loss": sums["loss"] / n,
        "train_ce": sums["ce"] / n,
        "train_soft_f1": sums["soft_f1"] / n,
        "skipped_samples": sums["failed"],
        **_rates(sums, acc.num_processes),
    }


def _rates(sums: dict, world: int) -> dict:
    total = sums["wait"] + sums["busy"]
    return {
        "images_per_s": sums["images"] * world / max(total, 1e-9),
        "data_wait": sums["wait"] / max(total, 1e-9),
    }


def _check_finite(acc: Accelerator, finite: bool, state) -> None:
    """Stop every rank together when any rank's loss of any micro-batch of this optimizer step
    was NaN or inf (no rank left waiting, nothing applied to the weights)."""
    bad = acc.reduce(torch.tensor([0.0 if finite else 1.0], device=acc.device), "sum")
    if bad.item() > 0:
        raise ArtclfError(
            f"non-finite loss at step {state.step + 1} (epoch {state.epoch + 1}); "
            "lower --lr, check --clip-grad, or try --mixed_precision bf16 instead of fp16"
        )


@torch.inference_mode()
def evaluate(
    acc: Accelerator,
    model,
    batches: Iterable,
    classes: list[str],
    expected: int,
    stop_requested: Callable[[], bool] = lambda: False,
) -> tuple[dict | None, dict | None]:
    """Metrics over every sample of the split exactly once, whatever the number of ranks, and
    the predictions behind them (``keys``, ``labels``, ``probs``; gathered on every rank).
    ``(None, None)`` on every rank when a stop was requested on any rank meanwhile.

    Each rank keeps (key, label, probabilities) of what it read; one ``gather_object`` at the
    end brings them together. The collectives here (buffer broadcast, gather) run on every
    rank unconditionally: ranks hold different counts, and some may hold no sample at all
    (fewer shards than ranks, or all of a rank's samples unreadable).
    """
    model = acc.unwrap_model(model)  # DDP's forward broadcasts buffers: a collective per batch
    _broadcast_buffers(acc, model)
    model.eval()
    keys, labels, probs, failed, lost, stopped = [], [], [], [], 0, False
    for batch in batches:
        failed += batch.failed
        lost += batch.lost
        if stop_requested():
            stopped = True
            break
        if not batch.keys:
            continue
        with acc.autocast():
            logits = model(batch.images.to(acc.device))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(batch.labels.numpy())
        keys += batch.keys
    mine = [
        (
            keys,
            np.concatenate(labels) if labels else np.zeros(0, np.int64),
            np.concatenate(probs) if probs else np.zeros((0, len(classes)), np.float32),
            failed,
            lost,
            stopped,
        )
    ]
    parts = gather_object(mine)
    if any(p[5] for p in parts):
        return None, None
    all_keys = [k for p in parts for k in p[0]]
    if len(set(all_keys)) != len(all_keys):
        raise ArtclfError("evaluation saw a sample twice; the shard split across ranks is broken")
    y = np.concatenate([p[1] for p in parts])
    p = np.concatenate([p[2] for p in parts])
    unreadable = [k for part in parts for k in part[3]]
    skipped = sum(part[4] for part in parts)
    if len(all_keys) + skipped != expected:
        raise ArtclfError(
            f"evaluation counted {len(all_keys)} samples (+{skipped} unreadable: {unreadable[:3]}), "
            f"_info.json says {expected}"
        )
    metrics = classification_metrics(y, p, classes)
    metrics["skipped_samples"] = skipped  # samples not scored: in history.jsonl as val_skipped_samples
    metrics["unreadable"] = unreadable  # what they were: sample keys, or "URL: cause" of a shard
    return metrics, {"keys": all_keys, "labels": y, "probs": p}


def _broadcast_buffers(acc: Accelerator, model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every rank, as DDP's next forward would have made them
    (in training it broadcasts them before each forward; ranks drift apart in between)."""
    if acc.num_processes == 1:
        return
    for buf in model.buffers():
        torch.distributed.broadcast(buf, src=0)
