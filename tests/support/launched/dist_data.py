"""Run under `accelerate launch` by tests/test_data.py: the keys of 3 epochs sliced off each
rank's one persistent train stream (2 workers), and each rank's val keys.

ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \
    tests/support/launched/dist_data.py SHARDS OUT.json
"""

from __future__ import annotations

import json
import sys
from itertools import islice

from accelerate import Accelerator
from accelerate.utils import gather_object

from artclf.data import eval_loader, read_info, train_index
from artclf.train.order import Order
from artclf.train.stream import train_stream
from artclf.transforms import Preprocess


def main() -> None:
    shards, out = sys.argv[1], sys.argv[2]
    acc = Accelerator(cpu=True)
    info = read_info(shards)
    pre = Preprocess(image_size=48, resize=56)
    rank, world = acc.process_index, acc.num_processes
    keys = [k for b in eval_loader(info, "val", pre, 4, 2, rank, world) for k in b.keys]
    order = Order(info["splits"]["train"]["num_samples"], 8, seed=7, world=world)  # 4 per rank
    stream = iter(train_stream(train_index(info, shards), order, rank, pre, 2))
    epochs = [[b.keys for b in islice(stream, order.micro)] for _ in range(3)]
    mine = {"rank": rank, "world": world, "val_keys": keys, "stream_epochs": epochs}
    everyone = gather_object([mine])
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(everyone, f)
    acc.wait_for_everyone()  # no rank tears down while another still talks to it
    acc.end_training()  # destroy the process group: exiting with a live one can abort (SIGABRT)


if __name__ == "__main__":
    main()
