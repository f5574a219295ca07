"""Training throughput with synthetic batches, through the trainer's own step loop (run by bench/gpu.sh).

    python -m bench.gpu_throughput [--arch resnet50] [--size 512] [--batches 8,16,64,128] [--steps 30]
                                   [--budget 240] [--json OUT.json] [--device cuda]

For each per-device batch: fp32, bf16 autocast, bf16 + channels_last, and that + torch.compile.
Each runs ``engine.train_one_epoch`` under an ``Accelerator`` with that mixed precision, on the
same uint8 batch in pinned host memory (copied to the device each step, as in training): the
loss, AdamW (fused on CUDA), gradient clipping, the schedule and the all-rank checks of a real
run with the trainer's defaults. Reported: img/s after a warm-up, the warm-up time (compilation
included), peak device memory, and the device->host syncs per step of the steady run
(``torch.cuda.set_sync_debug_mode``; on CPU, not counted). Compiled variants run last, largest
batch first, while ``--budget`` seconds allow; the rest are reported as skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from artclf.data import Batch
from artclf.model import build_model
from artclf.train.recipe import make_optimizer
from artclf.transforms import Preprocess
from bench.train_overhead import CLASSES, run_loop

VARIANTS = {  # name: (mixed precision, channels_last, compile)
    "fp32": ("no", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(acc, model, opt, batch: Batch, steps: int, channels_last: bool) -> None:
    run_loop(acc, model, opt, itertools.repeat(batch, steps), steps, channels_last=channels_last)


def measure(arch: str, size: int, batch: int, steps: int, variant: str, device: str, backend: str) -> dict:
    precision, channels_last, compile_ = VARIANTS[variant]
    AcceleratorState._reset_state(reset_partial_state=True)  # a new mixed precision per variant
    acc = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    dev = acc.device
    torch.manual_seed(0)
    model = build_model(arch, "none", CLASSES, Preprocess(image_size=size))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model.compile(backend=backend)
    opt = make_optimizer(model, 3e-4, 0.05, fused=dev.type == "cuda")
    model, opt = acc.prepare(model, opt)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    data = Batch(images, labels, [str(i) for i in range(batch)])
    if dev.type == "cuda":
        data = data.pin_memory()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    run_steps(acc, model, opt, data, 5 if not compile_ else 8, channels_last)  # warm-up (and compilation)
    synchronize(dev)
    warmup = time.perf_counter() - t
    syncs = None
    if dev.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_steps(acc, model, opt, data, steps, channels_last)
                synchronize(dev)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught) / steps
    t = time.perf_counter()
    run_steps(acc, model, opt, data, steps, channels_last)
    synchronize(dev)
    rate = batch * steps / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    del model, opt
    acc.free_memory()
    return {
        "batch": batch, "variant": variant, "images_per_s": rate, "warmup_s": warmup,
        "peak_gib": peak, "syncs_per_step": syncs,
    }  # fmt: skip


def row_text(r: dict) -> str:
    if r.get("skipped"):
        return f"batch {r['batch']:4d}  {r['variant']:<27} skipped: {r['skipped']}"
    peak = f"{r['peak_gib']:6.1f} GiB" if r["peak_gib"] is not None else "      n/a"
    syncs = f"{r['syncs_per_step']:.2f}" if r["syncs_per_step"] is not None else "n/a"
    return (
        f"batch {r['batch']:4d}  {r['variant']:<27} {r['images_per_s']:8.1f} img/s  "
        f"warm-up {r['warmup_s']:6.1f} s  peak {peak}  syncs/step {syncs}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="8,16,64,128")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--budget", type=float, default=240, help="seconds for the compiled variants")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, {a.arch} at {a.size} px, {a.steps} steps per figure")
    batches = [int(b) for b in a.batches.split(",")]
    rows = []
    for batch in batches:
        for variant in ("fp32", "bf16", "bf16+channels_last"):
            rows.append(measure(a.arch, a.size, batch, a.steps, variant, a.device, a.compile_backend))
            print(row_text(rows[-1]), flush=True)
    start = time.perf_counter()
    for batch in sorted(batches, reverse=True):
        variant = "bf16+channels_last+compile"
        if time.perf_counter() - start > a.budget:
            rows.append({"batch": batch, "variant": variant, "skipped": f"past the {a.budget:g} s budget"})
        else:
            rows.append(measure(a.arch, a.size, batch, a.steps, variant, a.device, a.compile_backend))
        print(row_text(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
