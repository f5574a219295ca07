"""shard sizing (``--shard-samples auto``) on the Kaggle split sizes for 1, 8 and 16 GPUs: what
each reader gets is computed by plain webdataset's own ``split_by_node`` / ``split_by_worker``
(the way a plain WebDataset or timm reader, and evaluate's ``rank::world``, split a shard list),
not by the rule under test."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import webdataset as wds

from artclf.shard.layout import (
    MIN_SAMPLES,
    TARGET_SAMPLES,
    TRAIN_SHARDS_PER_READER,
    even_lengths,
    fixed_sizing,
    sizings,
)

# The real data after dedup (~8,100 of 8,446 kept, README "Choosing the global batch"), 80/10/10.
KAGGLE = {"train": 6480, "val": 810, "test": 810}
WORKERS = 8


@contextmanager
def reader_env(rank: int, world: int, worker: int, workers: int):
    """The variables webdataset's ``pytorch_worker_info`` reads instead of torch.distributed."""
    env = {"RANK": rank, "WORLD_SIZE": world, "WORKER": worker, "NUM_WORKERS": workers}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def shares(urls: list[str], gpus: int, workers: int) -> dict[tuple[int, int], list[str]]:
    """(rank, worker) -> the shards plain webdataset hands that reader: by node, then by worker."""
    out = {}
    for rank in range(gpus):
        for worker in range(workers):
            with reader_env(rank, gpus, worker, workers):
                out[rank, worker] = list(wds.split_by_worker(wds.split_by_node(iter(urls))))
    return out


def check_readers(split: str, lengths: list[int], gpus: int, workers: int) -> list[str]:
    """What goes wrong for the readers of a split cut into shards of ``lengths``: the constraints
    of shards/README.md, checked on what plain webdataset gives each (GPU, worker)."""
    n, m = sum(lengths), len(lengths)
    got = shares([f"{split}-{j:06d}.tar" for j in range(m)], gpus, workers)
    per_gpu = [sum(len(got[r, w]) for w in range(workers)) for r in range(gpus)]
    problems = []
    if min(per_gpu) < 1 and m < min(n, gpus):
        problems.append(f"{per_gpu.count(0)} GPUs get no shard of {n} samples")
    # below the floor only when that is what gives every GPU one shard
    if min(lengths) < MIN_SAMPLES and m != min(n, gpus):
        problems.append(f"a shard of {min(lengths)} < {MIN_SAMPLES} samples")
    want = TRAIN_SHARDS_PER_READER if split == "train" else 1
    fewest = min(len(v) for v in got.values())
    # the floor caps the count: readers get fewer only when one more shard would be too small
    if fewest < want and min(even_lengths(n, m + 1)) >= MIN_SAMPLES:
        problems.append(f"a GPU worker gets {fewest} < {want} shards, though smaller ones would do")
    return problems


def test_even_lengths_differ_by_one_at_most_and_add_up():
    for n in (1, 7, 100, 6480):
        for m in range(1, min(n, 40) + 1):
            lengths = even_lengths(n, m)
            assert sum(lengths) == n and len(lengths) == m and max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("gpus", [1, 8, 16])
def test_auto_sizes_meet_the_readers_and_the_floor_on_the_kaggle_splits(gpus):
    for split, z in sizings(KAGGLE, "auto", gpus, WORKERS).items():
        assert z.samples == KAGGLE[split] and max(z.lengths) - min(z.lengths) <= 1
        assert check_readers(split, list(z.lengths), gpus, WORKERS) == [], (gpus, split, z)
        # no smaller than needed: one shard fewer breaks the readers' share or the target size
        fewer = list(even_lengths(z.samples, z.shards - 1))
        assert check_readers(split, fewer, gpus, WORKERS) or max(fewer) > TARGET_SAMPLES, (gpus, split)


# The table in shards/README.md: (GPUs, split) -> (shards, shortest, longest, shards a GPU worker).
TABLE = {
    (1, "train"): (65, 99, 100, 8),
    (1, "val"): (9, 90, 90, 1),
    (8, "train"): (256, 25, 26, 4),
    (8, "val"): (64, 12, 13, 1),
    (16, "train"): (512, 12, 13, 4),
    (16, "val"): (101, 8, 9, 0),
}


@pytest.mark.parametrize("gpus, split", sorted(TABLE))
def test_the_readme_table(gpus, split):
    z = sizings(KAGGLE, "auto", gpus, WORKERS)[split]
    got = shares([str(j) for j in range(z.shards)], gpus, WORKERS)
    fewest = min(len(v) for v in got.values())
    assert (z.shards, min(z.lengths), max(z.lengths), fewest) == TABLE[gpus, split]
    assert (
        sizings(KAGGLE, "auto", gpus, WORKERS)["test"].lengths
        == sizings(KAGGLE, "auto", gpus, WORKERS)["val"].lengths
    )  # same size, same shards


def test_a_split_smaller_than_the_gpus_gives_each_gpu_it_can_one_sample():
    z = sizings({"train": 6480, "val": 12}, "auto", 16, WORKERS)["val"]
    assert z.lengths == (1,) * 12
    got = shares([str(j) for j in range(z.shards)], 16, WORKERS)
    assert sum(1 for r in range(16) if not any(got[r, w] for w in range(WORKERS))) == 4
    assert check_readers("val", list(z.lengths), 16, WORKERS) == []


def test_a_fixed_size_keeps_the_old_cut():
    assert fixed_sizing("val", 810, 100).lengths == (100,) * 8 + (10,)
    train = sizings(KAGGLE, 100, 16, 8)["train"].lengths
    assert sum(train) == 6480 and train == (100,) * 64 + (80,)


def test_the_check_catches_the_former_fixed_100_on_2_by_8_gpus():
    """The reference check is not vacuous: 100 samples a shard left 7 of 16 GPUs without val."""
    z = sizings(KAGGLE, 100, 16, WORKERS)
    val, train = (check_readers(s, list(z[s].lengths), 16, WORKERS) for s in ("val", "train"))
    assert val[0] == "7 GPUs get no shard of 810 samples"
    assert "a GPU worker gets 0 < 4 shards" in train[0]
