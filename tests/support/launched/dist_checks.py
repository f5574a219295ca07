"""Run under `accelerate launch` by tests/train/test_recipe.py: the all-rank stop and non-finite checks
of ``train_one_epoch`` (``check_every`` > 1) on every rank.

ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \
    tests/support/launched/dist_checks.py CASES.json OUT_DIR

CASES.json: a list of cases, each ``{"name", "check_every", "save_every", "steps", "stop_rank",
"stop_at", "nan_rank", "nan_at", "nan_in"}``: rank ``stop_rank`` asks to stop once it has taken
``stop_at`` optimizer steps; rank ``nan_rank`` puts a NaN into optimizer step ``nan_at`` (1-based;
null: none): into its micro-batch (``nan_in`` "input": the loss is NaN) or into its weight's
gradient during backward ("grad": the loss stays finite, as with an overflow in the backward).
For each case, rank r writes what happened to OUT_DIR/<name>-rank{r}.json: the steps taken,
``preempted``, the error text, the steps at which ``on_save`` ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from artclf.data import Batch
from artclf.errors import ArtclfError
from artclf.train.checkpoint import TrainState
from artclf.train.engine import train_one_epoch


def run_case(acc: Accelerator, case: dict) -> dict:
    rank = acc.process_index
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.01))
    state, saves = TrainState(), []
    if case["nan_in"] == "grad" and rank == case["nan_rank"]:
        # a tensor hook runs before DDP's all-reduce: every rank's gradient becomes NaN
        poison = lambda g: g * float("nan") if state.step + 1 == case["nan_at"] else g  # noqa: E731
        acc.unwrap_model(model).weight.register_hook(poison)

    def batches():
        for step in range(1, case["steps"] + 1):
            x = torch.randn(5, 4)
            if rank == case["nan_rank"] and step == case["nan_at"] and case["nan_in"] == "input":
                x[0, 0] = float("nan")
            yield Batch(images=x, labels=torch.randint(0, 3, (5,)), keys=[f"s{step}i{i}" for i in range(5)])

    def stop_requested() -> bool:
        return rank == case["stop_rank"] and state.step >= case["stop_at"]

    result = {"rank": rank, "preempted": None, "error": None}
    try:
        out = train_one_epoch(
            acc, model, optimizer, batches(), num_classes=3, ce_weight=0.3, f1_weight=0.7, grad_accum=1,
            clip_grad=1.0, lr_of_step=lambda s: 0.01, state=state, stop_requested=stop_requested,
            on_log=lambda r: None, on_save=lambda: saves.append(state.step), save_every=case["save_every"],
            log_every=1000, total_steps=case["steps"], check_every=case["check_every"],
        )  # fmt: skip
        result["preempted"] = out["preempted"]
    except ArtclfError as e:
        result["error"] = str(e)
    result.update(step=state.step, saves=saves)
    return result


def main() -> None:
    cases, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    acc = Accelerator(cpu=True)
    for case in cases:
        result = run_case(acc, case)
        (out / f"{case['name']}-rank{acc.process_index}.json").write_text(json.dumps(result))
        acc.wait_for_everyone()
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
