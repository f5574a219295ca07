"""Exact epochs: the train stream's order against independent references (the manifest's keys,
``tar``'s own listing, plain webdataset), whatever the number of ranks and workers; resuming
reads nothing before its position; the sample index written by ``artclf shard`` against
``tarfile``."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from itertools import islice

import pytest
import torch
import webdataset as wds

import artclf.train.stream as stream_module
from artclf.data import SampleIndex, index_shards, read_info, train_index
from artclf.errors import ArtclfError
from artclf.train.order import Order, aug_seed
from artclf.train.stream import decode_on_device, train_loader, train_stream
from artclf.transforms import Preprocess
from tests.shard.test_shard import expected

PRE = Preprocess(image_size=24, resize=24)
BATCH = 24  # global: divides by 1, 2, 3 and 4 ranks, and by each × 2 micro-batches


@pytest.fixture(scope="module")
def index(shards) -> SampleIndex:
    return train_index(read_info(str(shards)), str(shards))


def global_epoch(index, epoch, world, workers, seed=0, grad_accum=1) -> list[list[str]]:
    """The epoch's global batches as the ranks give them: micro-batch t of every rank, in rank
    order (each rank's loader run on its own, as its process would)."""
    order = Order(len(index), BATCH, seed, grad_accum, world)
    per_rank = [[b.keys for b in train_loader(index, order, epoch, r, PRE, workers)] for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank the same number of micro-batches
    return [[k for r in range(world) for k in per_rank[r][t]] for t in range(order.micro)]


def test_every_epoch_visits_every_key_once_but_the_rotating_remainder(work, index):
    keys = set(expected(work)["train"])  # the manifest's train keys: the reference
    n = len(keys)
    left_before: set[str] = set()
    orders = []
    for epoch in range(3):
        batches = global_epoch(index, epoch, world=1, workers=0)
        seen = [k for b in batches for k in b]
        assert all(len(b) == BATCH for b in batches) and len(batches) == n // BATCH
        assert len(seen) == len(set(seen)) == n - n % BATCH  # no key twice
        left = keys - set(seen)
        assert len(left) == n % BATCH and not left & left_before  # a different remainder each epoch
        left_before |= left
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2]
    other_seed = [k for b in global_epoch(index, 0, world=1, workers=0, seed=1) for k in b]
    assert other_seed != orders[0]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_global_batches_do_not_depend_on_ranks_or_workers(index, world):
    one = [global_epoch(index, e, world=1, workers=0) for e in (0, 1)]
    assert [global_epoch(index, e, world=world, workers=world % 3) for e in (0, 1)] == one
    # micro-batches of an optimizer step (--grad-accum): the same samples per step
    accum = global_epoch(index, 1, world=world, workers=1, grad_accum=2)
    assert [accum[2 * s] + accum[2 * s + 1] for s in range(len(accum) // 2)] == one[1]


def test_a_resumed_stream_reads_nothing_before_its_position(index, monkeypatch):
    """Resume mid-epoch 1: the samples read are exactly the ones of the batches it yields."""
    order = Order(len(index), BATCH, 0)
    reads: list[int] = []
    real = stream_module.read_sample

    def counting(idx, i, where=None):
        reads.append(i)
        return real(idx, i, where)

    monkeypatch.setattr(stream_module, "read_sample", counting)
    start = order.micro + order.micro // 2  # epoch 1, half-way
    got = list(islice(iter(train_stream(index, order, 0, PRE, 0, start=start)), 3))
    position = {k: i for i, k in enumerate(index.keys)}
    assert reads == [position[k] for b in got for k in b.keys]
    # and they are the uninterrupted run's batches at that point
    whole = list(train_loader(index, order, 1, 0, PRE, 0))
    assert [b.keys for b in got] == [b.keys for b in whole[order.micro // 2 : order.micro // 2 + 3]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(got, whole[order.micro // 2 :], strict=False))


def test_augmentation_is_a_function_of_seed_epoch_and_key(index):
    """The same sample in the same epoch gets the same crop and flip on any rank and worker."""
    a = {k: x for b in train_loader(index, Order(len(index), BATCH, 0, 1, 1), 0, 0, PRE, 0) for k, x in
         zip(b.keys, b.images, strict=True)}  # fmt: skip
    b = {}
    order2 = Order(len(index), BATCH, 0, 1, 2)
    for r in range(2):
        for batch in train_loader(index, order2, 0, r, PRE, 2):
            b.update(zip(batch.keys, batch.images, strict=True))
            assert batch.aug == [aug_seed(0, 0, k) for k in batch.keys]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_device_decode_path_gives_the_workers_samples(index):
    """train_stream(encoded=True) + decode_on_device ("cpu" here): the same keys, labels and
    pixels as the workers' decode path (each sample's own seeded crop)."""
    order = Order(len(index), BATCH, 3)
    plain = list(islice(iter(train_stream(index, order, 0, PRE, 0)), 4))
    encoded = list(islice(iter(train_stream(index, order, 0, PRE, 0, encoded=True)), 4))
    assert all(isinstance(b.images, list) and all(x.ndim == 1 for x in b.images) for b in encoded)
    on_device = list(decode_on_device(iter(encoded), PRE, frozenset(), torch.device("cpu")))
    assert [b.keys for b in on_device] == [b.keys for b in plain]
    assert [b.labels.tolist() for b in on_device] == [b.labels.tolist() for b in plain]
    assert all(torch.equal(a.images, b.images) for a, b in zip(on_device, plain, strict=True))


def test_the_index_matches_tarfile_and_plain_webdataset(shards, index):
    """``_index.json``: each span, read alone, is a tar of exactly that sample's members, as
    ``tarfile`` lists them and plain webdataset reads them."""
    info = json.loads((shards / "_info.json").read_text())
    urls = [str(shards / f) for f in info["splits"]["train"]["filenames"]]
    assert index.urls == urls
    ref = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert index.keys == list(ref)  # shard order, then tar order
    for i, key in enumerate(index.keys):
        with open(index.urls[index.shard[i]], "rb") as f:
            f.seek(int(index.offset[i]))
            with tarfile.open(fileobj=io.BytesIO(f.read(int(index.size[i])))) as t:
                members = {m.name: t.extractfile(m).read() for m in t}
        assert {n.split(".", 1)[1]: v for n, v in members.items()} == {
            k: v for k, v in ref[key].items() if not k.startswith("__")
        }
    rebuilt = index_shards(urls)  # from the headers alone: the same index
    assert rebuilt.keys == index.keys and (rebuilt.offset == index.offset).all()
    assert (rebuilt.size == index.size).all() and (rebuilt.shard == index.shard).all()


def test_a_set_without_index_is_indexed_at_start_with_a_warning(shards, tmp_path, index):
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    (old / "_index.json").unlink()
    with pytest.warns(UserWarning, match="_index.json: not found"):
        again = train_index(read_info(str(old)), str(old))
    assert again.keys == index.keys and (again.offset == index.offset).all()


def test_more_ranks_than_a_global_batch_allows_are_refused(index):
    with pytest.raises(ArtclfError, match="does not divide"):
        Order(len(index), BATCH, 0, 1, 5)
    with pytest.raises(ArtclfError, match="fewer than one global batch"):
        Order(len(index), len(index) + 1, 0)


def test_order_counts_each_flat_position_by_the_formula():
    """Small numbers by hand: 10 samples, batch 4: 2 steps, 2 left out, rotating by 2."""
    o = Order(10, 4, seed=5)
    assert o.steps == 2 and o.micro == 2
    assert [o.left_out(e).tolist() for e in range(6)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 1]]
    for e in range(5):
        assert Counter(o.epoch(e).tolist()) == Counter(set(range(10)) - set(o.left_out(e).tolist()))
