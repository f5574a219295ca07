"""Run under `accelerate launch` by tests/test_data.py: counts what each rank's loaders yield,
and the keys of 3 epochs sliced off one persistent train stream beside those of a fresh stream.

ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \
    tests/support/launched/dist_data.py SHARDS OUT.json
"""

from __future__ import annotations

import json
import sys
from itertools import islice

from accelerate import Accelerator
from accelerate.utils import gather_object

from artclf.data import eval_loader, read_info, steps_per_epoch, train_loader, train_stream
from artclf.transforms import Preprocess


def main() -> None:
    shards, out = sys.argv[1], sys.argv[2]
    acc = Accelerator(cpu=True)
    info = read_info(shards)
    pre = Preprocess(image_size=48, resize=56)
    rank, world = acc.process_index, acc.num_processes
    train = [len(b.keys) for b in train_loader(info, pre, 4, 2, rank, world, epoch=0, seed=0)]
    keys = [k for b in eval_loader(info, "val", pre, 4, 2, rank, world) for k in b.keys]
    steps = steps_per_epoch(info["splits"]["train"]["num_samples"], world, 4)
    stream = iter(train_stream(info, pre, 4, 2, rank, world, seed=7))
    epochs = [[b.keys for b in islice(stream, steps)] for _ in range(3)]
    del stream  # its workers end here
    fresh = [b.keys for b in islice(iter(train_stream(info, pre, 4, 2, rank, world, seed=7)), 3 * steps)]
    mine = {
        "rank": rank,
        "world": world,
        "train_batches": train,
        "val_keys": keys,
        "stream_epochs": epochs,
        "fresh_stream": fresh,
    }
    everyone = gather_object([mine])
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(everyone, f)
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
