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
from artclf.storage.outage import StorageUnavailable
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
    watch=None,
) -> dict:
    """Optimizer steps over ``batches`` (``grad_accum`` micro-batches each) until the epoch's
    ``total_steps``. Returns the epoch's means over all ranks, and ``preempted=True`` when a
    stop was requested on any rank (state saved by the caller).

    No step waits for the device: losses are summed as device tensors and read every
    ``log_every`` steps. Every ``check_every`` steps, at every step a save follows and at the
    epoch's last step, one four-element all-reduce after the optimizer step carries: a
    non-finite loss (any micro-batch since the epoch began, any rank), a non-finite gradient
    (any step since the last check: each step's per-parameter gradient norms are checked on
    the device, with the first bad step and parameter kept there; under fp16 loss scaling the
    scaler skips such steps itself), non-finite weights or buffers (the state a save would
    write), and a stop request. A stop ends every rank within ``check_every`` steps; anything
    non-finite raises on every rank within ``check_every`` steps, naming the step and the
    parameter, before any state from it is saved. ``on_step`` (every rank, after each
    optimizer step): the step's micro-batches (``--record-batches``). ``watch``
    (:class:`artclf.train.hangs.Watch`): told each phase and each micro-batch done.
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
    watch = watch or _NoWatch()
    grads = _GradCheck(acc, model, state.step)

    def unavailable() -> None:
        """Storage is still down past --storage-patience. One process at a step boundary saves
        (a rerun loses nothing); several cannot agree on a save while a peer may be waiting
        in a collective, and resume from the newest checkpoint."""
        if acc.num_processes == 1 and micro % grad_accum == 0:
            _check(acc, model, sums[0, 0], grads, False, state, check_every)  # nothing non-finite is saved
            state.epoch_sums = epoch_sums()
            on_save()
            acc.print(
                f"storage unavailable: state saved at step {state.step}; rerun the same command to resume"
            )

    t_end = time.perf_counter()
    watch.phase("train: waiting for data")
    for batch in _on_unavailable(batches, unavailable):
        t_data = time.perf_counter()
        lost += batch.lost
        if on_step is not None:
            taken.append(batch)
        x = batch.images.to(acc.device, non_blocking=True)
        y = batch.labels.to(acc.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # between optimizer steps, skip DDP's gradient all-reduce (it runs on the last micro-batch)
        syncs = not (micro + 1) % grad_accum
        with acc.no_sync(model) if not syncs else nullcontext():
            watch.phase(f"train: forward + soft-F1 all-reduce, micro-batch {micro % grad_accum + 1}")
            with acc.autocast():
                logits = model(x)
            loss, parts = combined_loss(logits, y, num_classes, ce_weight=ce_weight, f1_weight=f1_weight)
            watch.phase("train: backward" + (" (DDP gradient all-reduce)" if syncs else " (no sync)"))
            acc.backward(loss / grad_accum)
        sums += torch.stack([loss.detach().float(), parts["ce"].float(), parts["soft_f1"].float()]) * len(y)
        micro += 1
        images += len(y)
        window_images += len(y)
        watch.progress("train: waiting for data")
        if micro % grad_accum:
            t_now = time.perf_counter()
            meter.add(len(y), t_data - t_end, t_now - t_data)
            t_end = t_now
            continue
        check = _check_due(state, check_every, save_every, total_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr_of_step(state.step)
        grads.record()
        if clip_grad > 0:
            acc.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.step_in_epoch += 1
        stop = False
        if check:
            watch.phase("train: step check all-reduce")
            stop = _check(acc, model, sums[0, 0], grads, stop_requested(), state, check_every)
            watch.phase("train: waiting for data")
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


def _on_unavailable(batches: Iterable, then: Callable[[], None]):
    """``batches``, calling ``then`` before a :class:`StorageUnavailable` goes on up."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except StorageUnavailable:
            then()
            raise
        yield batch


class _NoWatch:
    def phase(self, where: str) -> None:
        pass

    def progress(self, where: str | None = None) -> None:
        pass


class _GradCheck:
    """Non-finite gradients, found on the device without a host wait: each step's per-parameter
    norms (one fused kernel), the first bad step and parameter index kept in a device tensor
    until the next check reads it. Off under fp16 loss scaling: there an inf gradient is
    routine, and the scaler skips that step and lowers the scale."""

    def __init__(self, acc: Accelerator, model, step: int) -> None:
        self.on = acc.scaler is None
        self.named = [(n, p) for n, p in acc.unwrap_model(model).named_parameters() if p.requires_grad]
        self.zero = torch.zeros((), device=acc.device)  # the norm of a parameter without a gradient
        self.step = torch.tensor(step, device=acc.device)  # counted on the device: no copy per step
        self.first = torch.full((2,), -1, dtype=torch.int64, device=acc.device)  # step, parameter

    def record(self) -> None:
        """After the backward of a step, before clipping (a NaN norm spreads to every gradient)."""
        if not self.on:
            return
        self.step += 1
        grads = [p.grad if p.grad is not None else self.zero for _, p in self.named]
        bad = ~torch.isfinite(torch.stack(torch._foreach_norm(grads)))
        found = torch.stack([self.step, bad.int().argmax()])
        self.first.copy_(torch.where(bad.any() & (self.first[0] < 0), found, self.first))

    def bad(self) -> torch.Tensor:
        return (self.first[0] >= 0).float()

    def describe(self, first: bool = False) -> str:
        step, i = self.first.tolist()
        if first:
            return f"the gradient was first non-finite at step {step}, in parameter '{self.named[i][0]}'"
        return f"non-finite gradient at step {step}, first in parameter '{self.named[i][0]}'"


def _check(acc: Accelerator, model, epoch_loss: torch.Tensor, grads: _GradCheck, stop: bool, state,
           check_every: int) -> bool:  # fmt: skip
    """The check after step ``state.step`` (one all-reduce of four flags, one wait): raise on
    every rank if any rank saw a non-finite loss, gradient or weight; else whether any rank
    asked to stop."""
    tensors = [t for t in acc.unwrap_model(model).state_dict().values() if t.is_floating_point()]
    flags = torch.stack(
        [
            (~torch.isfinite(epoch_loss)).float(),
            grads.bad(),
            (~torch.isfinite(torch.stack(torch._foreach_norm(tensors)))).any().float(),
            torch.tensor(float(stop), device=acc.device),
        ]
    )
    loss_bad, grad_bad, weights_bad, stopped = (v > 0 for v in acc.reduce(flags, "sum").tolist())
    if not (loss_bad or grad_bad or weights_bad):
        return stopped
    since = f" (or up to {check_every - 1} steps before: --check-every)" if check_every > 1 else ""
    local = grad_bad and bool(grads.bad().item())
    if loss_bad:
        found = f"non-finite loss at step {state.step} (epoch {state.epoch + 1}){since}"
        # a NaN gradient makes NaN weights, and those a NaN loss: name where it began
        found += f" ({grads.describe(first=True)})" if local else ""
    elif local:
        found = f"{grads.describe()} (epoch {state.epoch + 1}), with a finite loss"
    elif grad_bad:
        found = f"non-finite gradient on another rank by step {state.step} (epoch {state.epoch + 1})"
    else:
        found = (
            f"non-finite weights after step {state.step} (epoch {state.epoch + 1}){_first_bad(model, acc)}"
        )
    raise ArtclfError(
        f"{found}; no checkpoint holds it (the newest in RUN/state is from before it): lower --lr, check "
        "--clip-grad, or try --mixed_precision bf16 instead of fp16"
    )


def _first_bad(model, acc: Accelerator) -> str:
    for name, t in acc.unwrap_model(model).state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            return f", first in '{name}'"
    return " (on another rank)"
