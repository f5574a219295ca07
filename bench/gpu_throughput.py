"""ResNet50 training throughput on one GPU with synthetic tensors (run by bench/gpu.sh).

    python -m bench.gpu_throughput [--size 512] [--batches 64,128] [--steps 30]

For each batch size: fp32, bf16 autocast, bf16 + channels_last, bf16 + channels_last +
torch.compile; forward, 0.3·CE + 0.7·soft-F1, backward, AdamW step on uint8 inputs
normalised by the model (as in training). Prints img/s after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from artclf.losses import combined_loss
from artclf.model import build_model
from artclf.train import make_optimizer
from artclf.transforms import Preprocess


def measure(batch: int, size: int, steps: int, bf16: bool, channels_last: bool, compile_: bool) -> float:
    torch.manual_seed(0)
    model = build_model("resnet50", None, 50, Preprocess(image_size=size)).cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, 3e-4, 0.05)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 50, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(x)
        loss, _ = combined_loss(logits, y, 50)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5 if not compile_ else 8):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, ResNet50 at {a.size} px")
    torch.backends.cudnn.benchmark = True
    variants = [
        ("fp32", False, False, False),
        ("bf16", True, False, False),
        ("bf16+channels_last", True, True, False),
        ("bf16+channels_last+compile", True, True, True),
    ]
    for batch in map(int, a.batches.split(",")):
        for name, bf16, cl, comp in variants:
            rate = measure(batch, a.size, a.steps, bf16, cl, comp)
            print(f"batch {batch:4d}  {name:<28} {rate:8.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
