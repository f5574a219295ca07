"""Run under `accelerate launch` by tests/train/test_recipe.py: optimizer steps of ``train_one_epoch``
with gradient accumulation under DDP.

ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \
    tests/support/launched/dist_accum.py IN.pt OUT_DIR

IN.pt holds ``x`` [M, W, n, d] and ``y`` [M, W, n]: micro-batch m of rank r is ``x[m, r]``. Rank r
trains a DDP-wrapped float64 nn.Linear (weights from IN.pt) with plain SGD, no clipping, through
``train_one_epoch`` with IN.pt's ``grad_accum``, and saves OUT_DIR/rank{r}.pt: the parameters
after the last step, the gradients each time the loop asks for the next micro-batch (what the
micro-batches before it left, DDP all-reduce or not) and the gradients the optimizer steps with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from artclf.data import Batch
from artclf.train.checkpoint import TrainState
from artclf.train.engine import train_one_epoch


def main() -> None:
    inp, out = torch.load(sys.argv[1], weights_only=True), Path(sys.argv[2])
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    x, y = inp["x"][:, rank], inp["y"][:, rank]
    model = torch.nn.Linear(*inp["weight"].T.shape).double()
    with torch.no_grad():
        model.weight.copy_(inp["weight"])
        model.bias.copy_(inp["bias"])
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=inp["lr"]))
    plain = acc.unwrap_model(model)

    def grads() -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.detach().clone() for p in plain.parameters()]

    # what the optimizer sees: DDP has all-reduced by now (the step's last micro-batch)
    at_step: list[list] = []
    optimizer.optimizer.register_step_pre_hook(lambda *_: at_step.append(grads()))
    before_micro: dict[int, list] = {}

    def batches():
        for m in range(len(x)):
            if m:  # micro-batch m-1 is through forward and backward
                before_micro[m] = grads()
            yield Batch(images=x[m], labels=y[m], keys=[f"r{rank}m{m}i{i}" for i in range(len(y[m]))])

    state = TrainState()
    res = train_one_epoch(
        acc,
        model,
        optimizer,
        batches(),
        num_classes=inp["weight"].shape[0],
        ce_weight=inp["ce_weight"],
        f1_weight=inp["f1_weight"],
        grad_accum=inp["grad_accum"],
        clip_grad=0.0,
        lr_of_step=lambda _step: inp["lr"],
        state=state,
        stop_requested=lambda: False,
        on_log=lambda _row: None,
        on_save=lambda: None,
        save_every=0,
        log_every=1,
        total_steps=len(x) // inp["grad_accum"],
    )
    torch.save(
        {
            "rank": rank,
            "world": world,
            "ddp": type(model).__name__,
            "steps": state.step,
            "preempted": res["preempted"],
            "before_micro": before_micro,
            "at_step": at_step,
            "after": [p.detach().clone() for p in plain.parameters()],
        },
        out / f"rank{rank}.pt",
    )
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
