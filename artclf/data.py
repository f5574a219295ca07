"""The input pipeline over WebDataset shards (disk or ``s3://``), used by train and evaluate.

Train (per rank, rebuilt each epoch so its seeds move on):

    shard list ─ resample (seed, rank, worker, epoch) ─ tar → samples ─ shuffle buffer
      ─ decode + crop/flip → uint8 ─ batch ─ exactly ``steps`` batches per rank

Resampling instead of splitting the shard list: every rank draws shards with replacement
from the whole list, so no rank can run short and hang the others at a collective, and
``with_epoch`` on the loader makes every rank yield the same number of batches. An epoch is
``num_samples // (world × batch)`` steps, one pass in expectation.

Eval: rank r reads shards r, r+W, …; its workers split those; no resampling, partial last
batch, keys carried along, so every sample is seen exactly once across ranks.

A sample that fails to decode, and a shard that fails past storage's own retries, is
skipped; the batch carries the failed keys so the caller counts and reports them.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from artclf import storage
from artclf.errors import ArtclfError
from artclf.transforms import Preprocess, decode, eval_image, train_image


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N×3×H×W
    labels: torch.Tensor  # int64 N
    keys: list[str]
    failed: list[str] = field(default_factory=list)  # keys (or shard URLs) skipped since the last batch


def read_info(url: str) -> dict:
    """``_info.json`` of a shard set, with the shard URLs of each split filled in."""
    storage.register_webdataset_s3()
    info_url = storage.join(url, "_info.json")
    if not storage.exists(info_url):
        raise ArtclfError(f"{info_url}: not found; run `artclf shard --work WORK --out {url}` first")
    info = json.loads(storage.read_bytes(info_url))
    for s in info["splits"].values():
        s["urls"] = [storage.join(url, f) for f in s["filenames"]]
    return info


def _worker() -> tuple[int, int]:
    w = get_worker_info()
    return (w.id, w.num_workers) if w is not None else (0, 1)


def _worker_seed(rank: int) -> int:
    return rank * 1000 + _worker()[0]


def _tar_samples(shards: Iterator[dict]) -> Iterator[dict]:
    """tar → samples; a shard that cannot be read becomes one ``__error__`` marker, not a crash."""
    expand = wds.tarfile_to_samples()
    for shard in shards:
        try:
            yield from expand(iter([shard]))
        except Exception as e:  # storage already retried; a broken shard must not end the epoch
            yield {"__key__": shard["url"], "__error__": f"{type(e).__name__}: {e}"}


def _decode(sample: dict, make_tensor) -> tuple:
    """(tensor | None, label, key): None marks a sample that failed to decode."""
    key = sample.get("__key__", "?")
    try:
        if "__error__" in sample:
            raise OSError(sample["__error__"])
        label = int(sample["cls"])
        return make_tensor(decode(sample["jpg"]), label), label, key
    except Exception:  # a corrupt sample is counted by the caller, never fatal
        return None, -1, key


def _batches(items: Iterator[tuple], batch_size: int, partial_last: bool) -> Iterator[Batch]:
    xs, ys, keys, failed = [], [], [], []
    for x, y, key in items:
        if x is None:
            failed.append(key)
            continue
        xs.append(x)
        ys.append(y)
        keys.append(key)
        if len(xs) == batch_size:
            yield Batch(torch.stack(xs), torch.tensor(ys), keys, failed)
            xs, ys, keys, failed = [], [], [], []
    if xs and partial_last:
        yield Batch(torch.stack(xs), torch.tensor(ys), keys, failed)
    elif failed:  # nothing left to carry them: an empty batch reports them
        yield Batch(torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), [], failed)


def _train_tensor(
    x: torch.Tensor, label: int, pre: Preprocess, flip: frozenset[int], rng: random.Random
) -> torch.Tensor:
    return train_image(x, pre, label in flip, rng)


def _decode_train(src: Iterator[dict], pre: Preprocess, flip: frozenset[int], seed: int) -> Iterator[tuple]:
    rng = random.Random(seed * 7919 + _worker()[0])
    make = partial(_train_tensor, pre=pre, flip=flip, rng=rng)
    for sample in src:
        yield _decode(sample, make)


def _decode_eval(src: Iterator[dict], pre: Preprocess) -> Iterator[tuple]:
    for sample in src:
        yield _decode(sample, lambda x, _label: eval_image(x, pre))


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches each rank yields per epoch: one pass over the split in expectation."""
    return max(1, num_samples // (world_size * batch_size))


def train_loader(
    info: dict,
    pre: Preprocess,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    flip_classes: frozenset[int] = frozenset(),
    shuffle_buffer: int = 1000,
    steps: int | None = None,
) -> wds.WebLoader:
    """Exactly ``steps`` (default: one pass) batches of ``batch_size`` for this rank and epoch."""
    split = info["splits"]["train"]
    if len(split["urls"]) < world_size * max(1, workers):
        warnings.warn(
            f"{len(split['urls'])} train shards for {world_size} ranks × {max(1, workers)} workers: "
            "ranks and workers will often read the same shards; pack smaller shards "
            "(artclf shard --shard-samples)",
            stacklevel=2,
        )
    epoch_seed = seed * 100_003 + epoch
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            split["urls"], seed=epoch_seed, worker_seed=partial(_worker_seed, rank), deterministic=True
        ),
        _tar_samples,
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=epoch_seed * 1000 + rank),
        partial(_decode_train, pre=pre, flip=flip_classes, seed=epoch_seed * 1000 + rank),
        partial(_batches, batch_size=batch_size, partial_last=False),
    )
    n = steps if steps is not None else steps_per_epoch(split["num_samples"], world_size, batch_size)
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers).with_epoch(n)


def eval_loader(
    info: dict, split: str, pre: Preprocess, batch_size: int, workers: int, rank: int, world_size: int
) -> wds.WebLoader:
    """Every sample of ``split`` exactly once across all ranks (partial last batches)."""
    if split not in info["splits"]:
        raise ArtclfError(f"no '{split}' split in the shard set (has {sorted(info['splits'])})")
    urls = info["splits"][split]["urls"][rank::world_size]
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls) if urls else _Nothing(),
        wds.split_by_worker,
        _tar_samples,
        partial(_decode_eval, pre=pre),
        partial(_batches, batch_size=batch_size, partial_last=True),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=min(workers, max(1, len(urls))))


class _Nothing(torch.utils.data.IterableDataset):
    """The shard list of a rank that has no eval shard (more ranks than shards)."""

    def __iter__(self):
        return iter(())
