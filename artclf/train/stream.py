"""The train input: micro-batches in the exact order of :mod:`artclf.train.order`, read sample
by sample with one ranged read each (``_index.json`` says where), from any micro-batch on.

    micro-batch g ─ its positions (order) ─ ranged read of each (index) ─ decode + crop/flip
      (seeded by seed, epoch, key) ─ uint8 batch ─ [pinned] ─ the trainer

One stream serves a whole run: its workers start once and keep prefetching across epochs and
through evaluation. DataLoader hands out its workers' batches in turn (worker ``w`` of ``n``
gives the run's micro-batches ``g₀ + w``, ``g₀ + w + n``, …), so the batches arrive in order
whatever ``n``. Resuming at micro-batch ``g₀`` reads nothing before it.

Failures. A permanent storage answer raises at once (as in :mod:`artclf.data`); an outage is
waited out by storage and costs time, not samples, and one past its patience
(:class:`artclf.storage.StorageUnavailable`) raises too: the store is down, not the shard
broken. A sample that cannot be read (the shard is shorter than its index, its bytes are no
tar, its local copy is not the packed shard) or decoded is left out of its batch and counted
(``Batch.failed``, ``Batch.lost``); the first failed read of each shard is named on stderr.
More than ``max_failed_shards`` shards failing in a row (no sample read in between) raise, and
so does a micro-batch none of whose samples could be used (every rank must take the step, and
a set whose samples all fail would otherwise fail every batch of every epoch).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

import torch
import webdataset as wds

from artclf import storage
from artclf.data import Batch, SampleIndex, failure_reason, loader, read_sample, worker_info
from artclf.errors import ArtclfError
from artclf.train.order import Order, aug_seed
from artclf.train.shardcache import ShardCache
from artclf.transforms import Preprocess, decode, is_jpeg, train_batch_on_device, train_image


class ExactStream(torch.utils.data.IterableDataset):
    """This rank's micro-batches ``start, start + 1, …`` (up to ``stop``, None: endless)."""

    def __init__(
        self,
        index: SampleIndex,
        order: Order,
        rank: int,
        pre: Preprocess,
        flips: frozenset[int] = frozenset(),
        start: int = 0,
        stop: int | None = None,
        max_failed_shards: int = 10,
        encoded: bool = False,
        cache: ShardCache | None = None,
    ) -> None:
        if len(index) != order.num_samples:
            raise ArtclfError(f"the index holds {len(index)} samples, the order {order.num_samples}")
        if max_failed_shards < 0:
            raise ValueError(f"max_failed_shards must be >= 0, got {max_failed_shards}")
        self.index, self.order, self.rank, self.pre, self.flips = index, order, rank, pre, flips
        self.start, self.stop, self.max_failed_shards, self.encoded = start, stop, max_failed_shards, encoded
        self.cache = cache

    def __iter__(self) -> Iterator[Batch]:
        w, n = worker_info()
        failures = _Failures(self.max_failed_shards)
        epoch, order = -1, None
        g = self.start + w
        while self.stop is None or g < self.stop:
            e, t = self.order.locate(g)
            if e != epoch:
                epoch, order = e, self.order.epoch(e)
            yield self._batch([int(i) for i in self.order.batch(order, t, self.rank)], epoch, failures)
            g += n

    def _batch(self, positions: list[int], epoch: int, failures: _Failures) -> Batch:
        xs, labels, keys, augs, failed = [], [], [], [], []
        for i in positions:
            key = self.index.keys[i]
            try:
                sample = read_sample(self.index, i, self.cache.path if self.cache else None)
            except (storage.PermanentStorageError, storage.StorageUnavailable):
                raise  # a refusal, or the store down past the patience: not a broken shard
            except Exception as e:  # a short shard, bytes that are no tar, a copy that is not the shard
                url = self.index.urls[self.index.shard[i]]
                failed.append(f"{url}: {failures.read_failed(url, e)}")
                continue
            failures.read_ok()
            seed = aug_seed(self.order.seed, epoch, key)
            try:
                label = int(sample["cls"])
                jpg = sample["jpg"]
                if self.encoded and is_jpeg(jpg):
                    x = torch.frombuffer(bytearray(jpg), dtype=torch.uint8)
                else:
                    x = train_image(decode(jpg), self.pre, label in self.flips, random.Random(seed))
            except Exception:  # a corrupt sample is counted, never fatal on its own
                failed.append(key)
                continue
            xs.append(x)
            labels.append(label)
            keys.append(key)
            augs.append(seed)
        if not xs:
            raise ArtclfError(
                f"no sample of a train batch of {len(positions)} could be used (the last: {failed[-1]}); "
                "check the store, and the shard set with `artclf shard --verify`"
            )
        images = xs if self.encoded else torch.stack(xs)
        return Batch(images, torch.tensor(labels), keys, failed, len(failed), augs)


class _Failures:
    """Broken shards whose reads failed in a row, one worker's (an outage is not counted here:
    storage waits it out, or raises)."""

    def __init__(self, max_failed_shards: int) -> None:
        self.max_failed_shards = max_failed_shards
        self.shards: dict[str, str] = {}  # failed in a row: URL -> cause
        self.named: set[str] = set()  # shards already named on stderr

    def read_failed(self, url: str, e: Exception) -> str:
        cause = failure_reason(e, url)
        self.shards[url] = cause
        if len(self.shards) > self.max_failed_shards:
            raise ArtclfError(
                f"{url}: {cause} (failed shards in a row: {len(self.shards)}, more than max_failed_shards="
                f"{self.max_failed_shards}); check the store, and the shard set with `artclf shard --verify`"
            )
        if url not in self.named:
            self.named.add(url)
            print(f"artclf: skipping samples of shard {url}: {cause}", file=sys.stderr, flush=True)
        return cause

    def read_ok(self) -> None:
        self.shards.clear()


def train_stream(
    index: SampleIndex,
    order: Order,
    rank: int,
    pre: Preprocess,
    workers: int,
    flips: frozenset[int] = frozenset(),
    start: int = 0,
    stop: int | None = None,
    max_failed_shards: int = 10,
    timeout: float = 0,
    pin_memory: bool = False,
    encoded: bool = False,
    cache: ShardCache | None = None,
) -> wds.WebLoader:
    """This rank's micro-batches of the run from micro-batch ``start`` (``Order.locate``) to
    ``stop`` (None: endless; slice epochs off it). ``timeout``: seconds a worker may take for
    one batch (0: no limit). ``pin_memory``: page-locked batches. ``encoded``: JPEGs stay
    encoded, batches hold lists of them (the GPU decode path, :func:`decode_on_device`).
    ``cache``: read the shards from node-local copies (for S3)."""
    dataset = ExactStream(index, order, rank, pre, flips, start, stop, max_failed_shards, encoded, cache)
    return loader(dataset, workers, timeout, pin_memory)


def train_loader(
    index: SampleIndex, order: Order, epoch: int, rank: int, pre: Preprocess, workers: int, **stream
) -> wds.WebLoader:
    """One epoch of this rank's micro-batches (``stream``: :func:`train_stream`'s other arguments)."""
    start = epoch * order.micro
    return train_stream(index, order, rank, pre, workers, start=start, stop=start + order.micro, **stream)


def decode_on_device(
    batches: Iterator[Batch], pre: Preprocess, flip: frozenset[int], device: torch.device
) -> Iterator[Batch]:
    """The GPU decode path: batches of encoded JPEGs (``train_stream(encoded=True)``) decoded,
    cropped and flipped on ``device`` (:func:`artclf.transforms.train_batch_on_device`), each
    sample with its own seeded generator; a JPEG that fails to decode is dropped from its batch
    and counted like any failed sample."""
    for b in batches:
        if isinstance(b.images, list):
            rngs = [random.Random(s) for s in b.aug]
            x, bad = train_batch_on_device(b.images, b.labels.tolist(), pre, flip, rngs, device)
            keep = [i for i in range(len(b.keys)) if i not in bad]
            failed = b.failed + [b.keys[i] for i in bad]
            keys, aug = [b.keys[i] for i in keep], [b.aug[i] for i in keep]
            b = Batch(x, b.labels[keep], keys, failed, b.lost + len(bad), aug)
        yield b
