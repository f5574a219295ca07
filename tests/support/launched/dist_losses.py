"""Run under `accelerate launch` by tests/train/test_losses.py: one DDP step of the combined loss.

ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \
    tests/support/launched/dist_losses.py IN.pt OUT_DIR

Rank r takes the r-th equal slice of the batch in IN.pt, runs a DDP-wrapped nn.Linear with the
weights from IN.pt, backpropagates `combined_loss` and saves OUT_DIR/rank{r}.pt: its loss and
parts, the world size, the gradient of its logits (before DDP) and the parameter gradients
(after DDP's averaging).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from artclf.train.losses import combined_loss


def main() -> None:
    inp, out = torch.load(sys.argv[1], weights_only=True), Path(sys.argv[2])
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    model = torch.nn.Linear(*inp["weight"].T.shape)
    with torch.no_grad():
        model.weight.copy_(inp["weight"])
        model.bias.copy_(inp["bias"])
    model = acc.prepare(model)
    x, y = inp["x"].chunk(world)[rank], inp["y"].chunk(world)[rank]
    logits = model(x)
    logits.retain_grad()
    loss, parts = combined_loss(logits, y, inp["weight"].shape[0], inp["ce_weight"], inp["f1_weight"])
    acc.backward(loss)
    plain = acc.unwrap_model(model)
    res = {
        "rank": rank,
        "world": world,
        "ddp": type(model).__name__,
        "loss": loss.detach(),
        "ce": parts["ce"],
        "soft_f1": parts["soft_f1"],
        "logits_grad": logits.grad,
        "weight_grad": plain.weight.grad,
        "bias_grad": plain.bias.grad,
    }
    torch.save(res, out / f"rank{rank}.pt")
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
