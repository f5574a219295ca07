"""One epoch of training, and the learning-rate schedule it follows.

It takes what it needs as arguments; the run's shape (epochs, checkpoints, logging to files)
lives in ``artclf/train/stage.py``; exact evaluation across ranks in ``artclf/metrics/eval_loop.py``
(the evaluate stage runs it too).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from tqdm import tqdm

from artclf.errors import ArtclfError
from artclf.train.losses import combined_loss


def lr_at(step: int, total: int, warmup: int, peak: float, floor_ratio: float = 0.01) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine down to ``floor_ratio·peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Meter:
    """Images and seconds of one process, split into waiting for a batch and the rest, for the
    epoch under way: all of it, and steady state, after the first ``skip`` optimizer steps of
    the process's run (worker start-up, the first shuffle-buffer fill, cuDNN autotuning,
    compilation). DeepLearningExamples reports data and compute time apart the same way.

    Host clocks only: with the GPU queued ahead, time spent waiting on it lands in "busy" at the
    next point the host has to wait (a full launch queue, a log line), which is where it belongs.
    """

    def __init__(self, world: int, skip: int = 10) -> None:
        self.world, self.skip, self.steps = world, skip, 0
        self.start_epoch()

    def start_epoch(self) -> None:
        self.all = [0, 0.0, 0.0]  # images, wait, busy
        self.steady = [0, 0.0, 0.0]

    def add(self, images: int, wait: float, busy: float) -> None:
        for acc in (self.all, self.steady) if self.steps >= self.skip else (self.all,):
            acc[0] += images
            acc[1] += wait
            acc[2] += busy

    def step(self) -> None:
        self.steps += 1

    def rates(self) -> dict:
        out = {}
        for suffix, (images, wait, busy) in (("", self.all), ("_steady", self.steady)):
            total = wait + busy
            out[f"images_per_s{suffix}"] = images * self.world / total if total > 0 else None
            out[f"data_wait{suffix}"] = wait / total if total > 0 else None
        return out


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
    check_every: int = 1,
    meter: Meter | None = None,
    channels_last: bool = False,
    on_step: Callable[[list], None] | None = None,
) -> dict:
    """Optimizer steps over ``batches`` (``grad_accum`` micro-batches each) until the epoch's
    ``total_steps``. Returns the epoch's means over all ranks, and ``preempted=True`` when a
    stop was requested on any rank (state saved by the caller).

    No step waits for the device: losses are summed as device tensors and read every
    ``log_every`` steps. A stop request and a non-finite loss (any micro-batch, any rank) are
    folded into one two-element all-reduce before the optimizer step every ``check_every``
    steps, before every save and at the epoch's last step. ``on_step`` (every rank, after each
    optimizer step): the step's micro-batches (``--record-batches``). A stop therefore ends every rank
    within ``check_every`` steps; a non-finite loss raises on every rank within
    ``check_every`` steps, before any state is saved (with ``check_every`` 1, before the
    weights change).
    """
    model.train()
    meter = meter or Meter(acc.num_processes)
    meter.start_epoch()
    bar = tqdm(
        total=total_steps,
        initial=state.step_in_epoch,
        disable=not acc.is_main_process,
        desc=f"epoch {state.epoch + 1}",
        unit="step",
        mininterval=2.0,
    )
    # rows: the epoch, the log window; columns: loss, CE, soft-F1, each × images
    sums = torch.zeros(2, 3, device=acc.device)
    images, window_images, lost, micro = 0, 0, 0, 0
    before = torch.tensor(state.epoch_sums, dtype=torch.float32, device=acc.device)  # of a resumed epoch

    def epoch_sums() -> list[float]:
        """The epoch's figures over all ranks, resumed part included (one all-reduce)."""
        mine = torch.cat([sums[0], torch.tensor([images, lost], dtype=torch.float32, device=acc.device)])
        return (acc.reduce(mine, "sum") + before).tolist()

    taken: list = []  # this step's micro-batches, for on_step
    t_end = time.perf_counter()
    for batch in batches:
        t_data = time.perf_counter()
        lost += batch.lost
        if on_step is not None:
            taken.append(batch)
        x = batch.images.to(acc.device, non_blocking=True)
        y = batch.labels.to(acc.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # between optimizer steps, skip DDP's gradient all-reduce (it runs on the last micro-batch)
        with acc.no_sync(model) if (micro + 1) % grad_accum else nullcontext():
            with acc.autocast():
                logits = model(x)
            loss, parts = combined_loss(logits, y, num_classes, ce_weight=ce_weight, f1_weight=f1_weight)
            acc.backward(loss / grad_accum)
        sums += torch.stack([loss.detach().float(), parts["ce"].float(), parts["soft_f1"].float()]) * len(y)
        micro += 1
        images += len(y)
        window_images += len(y)
        if micro % grad_accum:
            t_now = time.perf_counter()
            meter.add(len(y), t_data - t_end, t_now - t_data)
            t_end = t_now
            continue
        stop = False
        if _check_due(state, check_every, save_every, total_steps):
            bad, stop = _all_ranks(acc, sums[0, 0], stop_requested())
            if bad:
                since = f" or up to {check_every - 1} steps before (--check-every)" if check_every > 1 else ""
                raise ArtclfError(
                    f"non-finite loss at step {state.step + 1} (epoch {state.epoch + 1}){since}; no "
                    "checkpoint holds it: lower --lr, check --clip-grad, or try --mixed_precision bf16 "
                    "instead of fp16"
                )
        for g in optimizer.param_groups:
            g["lr"] = lr_of_step(state.step)
        if clip_grad > 0:
            acc.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.step_in_epoch += 1
        bar.update(1)
        if on_step is not None:
            on_step(taken)
            taken = []
        t_now = time.perf_counter()
        meter.add(len(y), t_data - t_end, t_now - t_data)
        meter.step()
        if state.step % log_every == 0:
            window = sums[1].tolist()  # the one wait for the device between checks
            sums[1].zero_()
            on_log(
                {
                    "loss": window[0] / window_images,
                    "ce": window[1] / window_images,
                    "soft_f1": window[2] / window_images,
                    "lr": optimizer.param_groups[0]["lr"],
                    **meter.rates(),
                }
            )
            window_images = 0
        if stop:
            bar.close()
            state.epoch_sums = epoch_sums()  # saved by the caller
            return {"preempted": True}
        if save_every and state.step % save_every == 0:
            state.epoch_sums = epoch_sums()
            on_save()
        # the read above waits for the steps queued on the device, a save takes its time: both
        # are the trainer's own time, not waiting for data
        t_end = time.perf_counter()
        meter.add(0, 0.0, t_end - t_now)
    bar.close()
    total = state.epoch_sums = epoch_sums()  # kept for a stop during the evaluation that follows
    n = max(1.0, total[3])
    return {
        "preempted": False,
        "train_loss": total[0] / n,
        "train_ce": total[1] / n,
        "train_soft_f1": total[2] / n,
        "skipped_samples": int(total[4]),
        **meter.rates(),
    }


def _check_due(state, check_every: int, save_every: int, total_steps: int) -> bool:
    """Whether the step about to be taken is checked: every ``check_every`` steps, the epoch's
    last step and every step a checkpoint follows (nothing non-finite is ever saved)."""
    step = state.step + 1
    return (
        step % check_every == 0
        or state.step_in_epoch + 1 >= total_steps
        or bool(save_every and step % save_every == 0)
    )


def _all_ranks(acc: Accelerator, epoch_loss: torch.Tensor, stop: bool) -> tuple[bool, bool]:
    """(any rank's loss this epoch non-finite, any rank asked to stop): one all-reduce, one wait."""
    flags = torch.zeros(2, device=acc.device)
    flags[0] = ~torch.isfinite(epoch_loss)
    if stop:
        flags[1] = 1.0
    bad, stopped = acc.reduce(flags, "sum").tolist()
    return bad > 0, stopped > 0
