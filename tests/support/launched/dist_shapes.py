"""Run by tests/train/test_shapes.py under N processes: the trainer's ``train()`` (model, DDP, the
training loop, validation, checkpoints, model.pt) once per shard set, in one process group.

accelerate launch … tests/support/launched/dist_shapes.py OUT SHARDS [SHARDS …] -- TRAIN FLAGS

One launch per world size instead of one per (world size, shard set): starting 4 processes on
a 2-core machine costs more than the training itself. ``run()``'s wrapper (lock, watchdogs,
timeouts) has launch-based tests of its own in tests/train/test_shapes.py.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from artclf.config import parse
from artclf.train import TrainConfig, train
from artclf.train.preemption import Preemption


def main() -> None:
    split = sys.argv.index("--")
    out, shard_sets, flags = Path(sys.argv[1]), sys.argv[2:split], sys.argv[split + 1 :]
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=120))])
    stop = Preemption()
    for i, shards in enumerate(shard_sets):
        cfg = parse(TrainConfig, ["--shards", shards, "--run", str(out / f"run{i}"), *flags], "dist_shapes")
        acc.print(f"dist_shapes: {acc.num_processes} ranks on {shards}", flush=True)
        assert train(cfg, acc, stop) == 0
        acc.free_memory()
        acc._custom_objects.clear()  # register_for_checkpointing's list; free_memory keeps it
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
