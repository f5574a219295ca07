"""Run under `accelerate launch` by tests/test_data.py: counts what each rank's loaders yield.

ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/dist_data.py SHARDS OUT.json
"""

from __future__ import annotations

import json
import sys

from accelerate import Accelerator
from accelerate.utils import gather_object

from artclf.data import eval_loader, read_info, train_loader
from artclf.transforms import Preprocess


def main() -> None:
    shards, out = sys.argv[1], sys.argv[2]
    acc = Accelerator(cpu=True)
    info = read_info(shards)
    pre = Preprocess(image_size=48, resize=56)
    rank, world = acc.process_index, acc.num_processes
    train = [len(b.keys) for b in train_loader(info, pre, 4, 2, rank, world, epoch=0, seed=0)]
    keys = [k for b in eval_loader(info, "val", pre, 4, 2, rank, world) for k in b.keys]
    mine = {"rank": rank, "world": world, "train_batches": train, "val_keys": keys}
    everyone = gather_object([mine])
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(everyone, f)
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
