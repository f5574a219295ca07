"""What resuming costs the input pipeline, at the start, the middle and the end of an epoch.

    python -m bench.resume [--scale 0.06] [--workers 2] [--batch 32] [--repeats 3]

A sample data set at the Kaggle originals' sizes is ingested, deduplicated (hashes), split and
sharded (576 px), as in ``bench/loader.py``. Then, for each position of epoch 2 (its first,
middle and last micro-batch), the seconds from nothing (``read_info``, the sample index, the
epoch's order, a new stream with its workers) to the first batch at that position, median of
``--repeats``; and the samples read to produce that first batch (counted in the main process,
``--workers 0``). Against, in the same run:

* the resampled stream artclf had before exact epochs (``bench.loader.resampled_stream``): it
  resumed by starting a new random stream, so its first batch is the floor any resume can have;
* replay: the exact stream started at the epoch's beginning and read up to the position, which
  is what a loader that can only skip by iterating (accelerate's ``skip_first_batches`` over an
  iterable dataset) pays.

Prints a table and the ratio of each resume to the resampled stream's first batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

import artclf.train.stream as stream_module
from artclf.data import read_info, train_index
from artclf.shard import ShardConfig, shard
from artclf.train.order import Order
from artclf.train.stream import train_stream
from artclf.transforms import Preprocess
from bench.loader import prepare, resampled_stream


def first_batch(make) -> float:
    t = time.perf_counter()
    next(iter(make()))
    return time.perf_counter() - t


def resume_at(url: str, batch: int, workers: int, g: int):
    def make():
        info = read_info(url)
        index = train_index(info, url)
        return train_stream(index, Order(len(index), batch, seed=0), 0, Preprocess(), workers, start=g)

    return make


def reads_for_first_batch(url: str, batch: int, g: int) -> int:
    """Samples read (ranged reads) before the first batch at ``g`` is out, in-process."""
    count = [0]
    real = stream_module.read_sample

    def counting(index, i, where=None):
        count[0] += 1
        return real(index, i, where)

    stream_module.read_sample = counting
    try:
        next(iter(resume_at(url, batch, 0, g)()))
    finally:
        stream_module.read_sample = real
    return count[0]


def replay(url: str, batch: int, workers: int, epoch_start: int, g: int) -> float:
    t = time.perf_counter()
    it = iter(resume_at(url, batch, workers, epoch_start)())
    for _ in islice(it, g - epoch_start + 1):
        pass
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.06, help="sample-data scale (0.06: about 500 images)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, workers {a.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work, _ = prepare(root, a.scale, "kaggle")
        url = str(root / "shards")
        info = shard(ShardConfig(work=work, out=url, shard_samples=100))  # as recorded in docs/benchmarks.md
        order = Order(info["splits"]["train"]["num_samples"], a.batch, seed=0)
        base = statistics.median(
            first_batch(lambda: resampled_stream(read_info(url), Preprocess(), a.batch, a.workers))
            for _ in range(a.repeats)
        )
        rows = []
        for name, t in (("start", 0), ("middle", order.micro // 2), ("end", order.micro - 1)):
            g = order.micro + t  # epoch 2
            took = statistics.median(
                first_batch(resume_at(url, a.batch, a.workers, g)) for _ in range(a.repeats)
            )
            reads = reads_for_first_batch(url, a.batch, g)
            rows.append((name, t, took, reads, replay(url, a.batch, a.workers, order.micro, g)))
    print(f"train images {order.num_samples}, batch {a.batch}, {order.micro} batches an epoch")
    print(f"resampled stream (before exact epochs), first batch: {base:.3f} s")
    print("position in epoch 2   first batch   samples read   ratio to resampled   replay to it")
    for name, t, took, reads, rep in rows:
        print(f"{name:7} (batch {t:4d})   {took:9.3f} s   {reads:12d}   {took / base:17.2f}x   {rep:10.2f} s")


if __name__ == "__main__":
    main()
