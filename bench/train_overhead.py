"""Overhead of artclf's training loop over a bare PyTorch loop: same model, batches and loss.

    python -m bench.train_overhead [--arch resnet18] [--size 64] [--batch 16] [--steps 30] [--repeats 3]

Both loops run forward, ``0.3·CE + 0.7·soft-F1``, backward and an AdamW step on the same
in-memory uint8 batches. artclf's loop (``engine.train_one_epoch`` under an ``Accelerator``)
adds what a real run needs: the LR schedule, the all-rank finite-loss check, the preemption
trigger, timing and log callbacks, the progress bar. Runs alternate, ``--repeats`` times
each, after one warm-up; the median steps/s of each is compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from accelerate import Accelerator

from artclf.checkpoint import TrainState
from artclf.data import Batch
from artclf.engine import lr_at, train_one_epoch
from artclf.losses import combined_loss
from artclf.model import build_model
from artclf.train import make_optimizer
from artclf.transforms import Preprocess

CLASSES = 50


def batches(n: int, batch: int, size: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    return [
        Batch(
            torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, CLASSES, (batch,), generator=g),
            [f"k{i}_{j}" for j in range(batch)],
        )
        for i in range(n)
    ]


def bare(model, opt, data: list[Batch]) -> float:
    model.train()
    t = time.perf_counter()
    for b in data:
        loss, _ = combined_loss(model(b.images), b.labels, CLASSES)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return len(data) / (time.perf_counter() - t)


def ours(acc, model, opt, data: list[Batch]) -> float:
    state = TrainState()
    t = time.perf_counter()
    train_one_epoch(
        acc,
        model,
        opt,
        data,
        num_classes=CLASSES,
        ce_weight=0.3,
        f1_weight=0.7,
        grad_accum=1,
        clip_grad=0.0,
        lr_of_step=lambda s: lr_at(s, 1000, 10, 3e-4),
        state=state,
        stop_requested=lambda: False,
        on_log=lambda row: None,
        on_save=lambda: None,
        save_every=0,
        log_every=10,
        total_steps=len(data),
    )
    return len(data) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {a.arch} at {a.size} px, batch {a.batch}"
        f", {a.steps} steps per run"
    )
    data = batches(a.steps, a.batch, a.size)
    torch.manual_seed(0)
    plain = build_model(a.arch, None, CLASSES, Preprocess(image_size=a.size))
    plain_opt = make_optimizer(plain, 3e-4, 0.05)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    net = build_model(a.arch, None, CLASSES, Preprocess(image_size=a.size))
    model_opt = acc.prepare(net, make_optimizer(net, 3e-4, 0.05))
    bare(plain, plain_opt, data[:3])  # warm-up both
    ours(acc, *model_opt, data[:3])
    b_rates, o_rates = [], []
    for _ in range(a.repeats):
        b_rates.append(bare(plain, plain_opt, data))
        o_rates.append(ours(acc, *model_opt, data))
    b, o = statistics.median(b_rates), statistics.median(o_rates)
    print(f"bare PyTorch loop   {b:7.3f} steps/s  (runs: {', '.join(f'{r:.3f}' for r in b_rates)})")
    print(f"artclf train loop   {o:7.3f} steps/s  (runs: {', '.join(f'{r:.3f}' for r in o_rates)})")
    print(f"overhead: {100 * (b / o - 1):+.1f} %  (artclf time per step / bare time per step - 1)")


if __name__ == "__main__":
    main()
