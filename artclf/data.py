"""The input pipeline over WebDataset shards (disk or ``s3://``), used by train and evaluate.

Train (per rank; one endless stream for a whole run, epochs sliced off it):

    shard list ─ resample (seed, rank, worker) ─ tar → samples ─ shuffle buffer
      ─ decode + crop/flip → uint8 ─ batch ─ [pinned] ─ next ``steps`` batches = one epoch

Resampling instead of splitting the shard list: every rank draws shards with replacement
from the whole list, so no rank can run short and hang the others at a collective, and
taking the same number of batches from every rank's stream gives every rank the same number
of steps. An epoch is ``num_samples // (world × batch)`` steps, one pass in expectation. The
stream's workers start once per run, not once per epoch; a resumed run starts a new stream
seeded by the step it resumes at.

Eval: rank r reads shards r, r+W, …; its workers split those; no resampling, partial last
batch, keys carried along, so every sample is seen exactly once across ranks.

Failures. A permanent storage answer (:class:`artclf.storage.PermanentStorageError`: access
denied or expired credentials, no such bucket, key or file, no credentials at all) raises at
once, train and eval, naming the URL and the reason: resampling would only meet it again, and
the rank would stall while its peers die at the collective timeout. Anything else, a sample
that fails to decode or a shard that fails past storage's own retries (unreachable endpoint,
broken tar, a shard without samples), is skipped; the batch carries the failed keys (or shard
URLs) so the caller counts and reports them. In train, more than ``max_failed_shards`` failed
shards in a row in one worker's stream raise (resampling could spin on them forever), and
so do more than ``MAX_FAILED_SAMPLES_IN_A_ROW`` samples that fail to decode; eval
reads each shard once and only counts. Exceptions in DataLoader workers reach the caller as
PyTorch re-raises them: same type, the worker's traceback and message (URL included) in the
text. ``timeout`` (seconds, with workers only) ends a read that stalls without failing.
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from artclf import storage
from artclf.errors import ArtclfError
from artclf.transforms import Preprocess, decode, eval_image, is_jpeg, train_batch_on_device, train_image
from artclf.workers import ignore_stop_signals


@dataclass
class Batch:
    images: torch.Tensor | list[torch.Tensor]  # uint8 N×3×H×W; with --gpu-decode, encoded JPEGs
    labels: torch.Tensor  # int64 N
    keys: list[str]
    failed: list[str] = field(default_factory=list)  # since the last batch: keys, or "URL: cause" of a shard
    lost: int = 0  # samples not read since the last batch (a failed shard: all it had left)

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader's pin-memory thread calls this), so the copy to
        the GPU with ``non_blocking=True`` is asynchronous."""
        images = (
            [x.pin_memory() for x in self.images]
            if isinstance(self.images, list)
            else self.images.pin_memory()
        )
        return Batch(images, self.labels.pin_memory(), self.keys, self.failed, self.lost)


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


def _reason(e: Exception, url: str) -> str:
    """One line for a failed shard; webdataset's tar iterators append `` @ <stream>`` and the URL
    to an exception's args, which would print as a tuple."""
    text = str(e.args[0]).split(" @ <", 1)[0] if e.args else ""
    text = text if isinstance(e, ArtclfError) else f"{type(e).__name__}: {text}"
    return text.removeprefix(f"{url}: ")


def tar_samples(
    shards: Iterator[dict], max_failed: int | None = None, lengths: dict[str, int] | None = None
) -> Iterator[dict]:
    """tar → samples. A permanent storage answer raises; any other failed shard becomes one
    ``__error__`` marker, and more than ``max_failed`` of them in a row (None: no limit) raise.
    The marker carries ``__lost__``, the samples of the shard not read (``lengths``: url ->
    samples, from _info.json), and a warning naming the shard goes to stderr."""
    in_a_row = 0
    for shard in shards:
        url, n = shard["url"], 0
        try:
            with storage.open_read(url) as stream:
                files = wds.tariterators.tar_file_expander(iter([{"url": url, "stream": stream}]))
                for sample in wds.tariterators.group_by_keys(files):
                    n += 1
                    yield sample
        except storage.PermanentStorageError as e:
            raise storage.PermanentStorageError(f"{url}: {_reason(e, url)}") from None
        except Exception as e:  # storage already retried; one broken shard must not end the epoch
            cause = _reason(e, url)
        else:
            cause = None if n else "no samples in the shard"
        if cause is None:
            in_a_row = 0
            continue
        in_a_row += 1
        if max_failed is not None and in_a_row > max_failed:
            raise ArtclfError(
                f"{url}: {cause} (failed shards in a row: {in_a_row}, more than max_failed_shards="
                f"{max_failed}); check the store, and the shard set with `artclf shard --verify`"
            )
        length = (lengths or {}).get(url)
        lost = max(length - n, 0) if length is not None else 0
        of = f"{lost} of its {length} samples unread" if length is not None else f"{n} samples read"
        print(f"artclf: skipping shard {url}: {cause} ({of})", file=sys.stderr, flush=True)
        yield {"__key__": url, "__error__": cause, "__lost__": lost}


def _decode(sample: dict, make_tensor, encoded: bool = False) -> tuple:
    """(tensor, label, key), or for what could not be read (None, samples lost, what): a sample
    that fails to decode is (None, 1, key), a failed shard (None, its unread samples, "URL: cause").
    ``encoded``: a JPEG stays encoded (1-D uint8, for :func:`decode_on_device`)."""
    key = sample.get("__key__", "?")
    if "__error__" in sample:
        return None, sample["__lost__"], f"{key}: {sample['__error__']}"
    try:
        label = int(sample["cls"])
        if encoded and is_jpeg(sample["jpg"]):
            return torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8), label, key
        return make_tensor(decode(sample["jpg"]), label), label, key
    except Exception:  # a corrupt sample is counted by the caller, never fatal
        return None, 1, key


# Samples in a row that fail to decode before the train stream gives up: ten default shards.
# Resampling never runs out, so a shard set that is wholly undecodable would spin forever.
MAX_FAILED_SAMPLES_IN_A_ROW = 1000


def _batches(
    items: Iterator[tuple],
    batch_size: int,
    partial_last: bool,
    max_failed: int | None = None,
    stack: bool = True,
) -> Iterator[Batch]:
    """Batches of ``batch_size`` (a partial last one if ``partial_last``); ``stack`` False keeps
    the images a list (encoded JPEGs of different lengths, for the GPU decode path)."""
    xs, ys, keys, failed, lost, in_a_row = [], [], [], [], 0, 0
    for x, y, key in items:
        if x is None:  # y: samples lost (see _decode)
            failed.append(key)
            lost += y
            in_a_row += 1
            if max_failed is not None and in_a_row > max_failed:
                raise ArtclfError(
                    f"{in_a_row} samples in a row failed to decode (the last: {key}); check the shard "
                    "set with `artclf shard --verify`, and that Pillow/torchvision decode its images"
                )
            continue
        in_a_row = 0
        xs.append(x)
        ys.append(y)
        keys.append(key)
        if len(xs) == batch_size:
            yield Batch(torch.stack(xs) if stack else xs, torch.tensor(ys), keys, failed, lost)
            xs, ys, keys, failed, lost = [], [], [], [], 0
    if xs and partial_last:
        yield Batch(torch.stack(xs) if stack else xs, torch.tensor(ys), keys, failed, lost)
    elif failed:  # nothing left to carry them: an empty batch reports them
        empty = torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        yield Batch(*empty, [], failed, lost)


def _train_tensor(
    x: torch.Tensor, label: int, pre: Preprocess, flip: frozenset[int], rng: random.Random
) -> torch.Tensor:
    return train_image(x, pre, label in flip, rng)


def _decode_train(
    src: Iterator[dict], pre: Preprocess, flip: frozenset[int], seed: int, encoded: bool = False
) -> Iterator[tuple]:
    """Decoded, cropped and flipped samples; ``encoded``: JPEGs stay encoded (1-D uint8) for
    :func:`decode_on_device`, anything else is still decoded here."""
    rng = random.Random(seed * 7919 + _worker()[0])
    make = partial(_train_tensor, pre=pre, flip=flip, rng=rng)
    for sample in src:
        yield _decode(sample, make, encoded)


def decode_on_device(
    batches: Iterator[Batch], pre: Preprocess, flip: frozenset[int], seed: int, device: torch.device
) -> Iterator[Batch]:
    """The GPU decode path: batches of encoded JPEGs (``train_stream(encoded=True)``) decoded,
    cropped and flipped on ``device`` (:func:`artclf.transforms.train_batch_on_device`); a JPEG
    that fails to decode is dropped from its batch and counted like any failed sample."""
    rng = random.Random(seed)  # the caller's seed differs by rank
    for b in batches:
        if isinstance(b.images, list):
            x, bad = train_batch_on_device(b.images, b.labels.tolist(), pre, flip, rng, device)
            keep = [i for i in range(len(b.keys)) if i not in bad]
            failed = b.failed + [b.keys[i] for i in bad]
            b = Batch(x, b.labels[keep], [b.keys[i] for i in keep], failed, b.lost + len(bad))
        yield b


def _decode_eval(src: Iterator[dict], pre: Preprocess) -> Iterator[tuple]:
    for sample in src:
        yield _decode(sample, lambda x, _label: eval_image(x, pre))


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches each rank yields per epoch: one pass over the split in expectation."""
    return max(1, num_samples // (world_size * batch_size))


def train_stream(
    info: dict,
    pre: Preprocess,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    seed: int,
    flip_classes: frozenset[int] = frozenset(),
    shuffle_buffer: int = 1000,
    max_failed_shards: int = 10,
    timeout: float = 0,
    pin_memory: bool = False,
    encoded: bool = False,
) -> wds.WebLoader:
    """An endless stream of ``batch_size`` batches for this rank, for a whole run: iterate it
    once and slice epochs off it (``itertools.islice``), so the workers start once and their
    shuffle buffers stay full across epochs and through evaluation.

    ``max_failed_shards``: failed shards in a row (per worker) that are skipped; one more raises
    :class:`ArtclfError` (0: the first failed shard raises). ``timeout``: seconds a worker may
    take for one batch before the loader raises (0: no limit; ignored without workers, as
    PyTorch has no timeout there). A permanent storage error always raises at once.
    ``pin_memory``: page-locked batches, for asynchronous copies to a GPU. ``encoded``: JPEGs
    stay encoded, batches hold lists of them (the GPU decode path, :func:`decode_on_device`).
    """
    if max_failed_shards < 0:
        raise ValueError(f"max_failed_shards must be >= 0, got {max_failed_shards}")
    split = info["splits"]["train"]
    if len(split["urls"]) < world_size * max(1, workers):
        warnings.warn(
            f"{len(split['urls'])} train shards for {world_size} ranks × {max(1, workers)} workers: "
            "ranks and workers will often read the same shards; pack smaller shards "
            "(artclf shard --shard-samples)",
            stacklevel=2,
        )
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            split["urls"], seed=seed, worker_seed=partial(_worker_seed, rank), deterministic=True
        ),
        partial(tar_samples, max_failed=max_failed_shards, lengths=_lengths(split)),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed * 1000 + rank),
        partial(_decode_train, pre=pre, flip=flip_classes, seed=seed * 1000 + rank, encoded=encoded),
        partial(
            _batches,
            batch_size=batch_size,
            partial_last=False,
            max_failed=MAX_FAILED_SAMPLES_IN_A_ROW,
            stack=not encoded,
        ),
    )
    return _loader(pipeline, workers, timeout, pin_memory)


def train_loader(
    info: dict,
    pre: Preprocess,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    steps: int | None = None,
    **stream: Any,
) -> wds.WebLoader:
    """Exactly ``steps`` (default: one pass) batches of ``batch_size`` for this rank and epoch:
    :func:`train_stream` (``stream``: its other arguments) cut to one epoch, started afresh each
    time it is iterated."""
    one_pass = steps_per_epoch(info["splits"]["train"]["num_samples"], world_size, batch_size)
    n = steps if steps is not None else one_pass
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    epoch_seed = seed * 100_003 + epoch
    return train_stream(info, pre, batch_size, workers, rank, world_size, epoch_seed, **stream).with_epoch(n)


def eval_loader(
    info: dict,
    split: str,
    pre: Preprocess,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    timeout: float = 0,
    pin_memory: bool = False,
) -> wds.WebLoader:
    """Every sample of ``split`` exactly once across all ranks (partial last batches); failed
    shards are skipped and counted, a permanent storage error raises; ``timeout`` as in
    :func:`train_loader`."""
    if split not in info["splits"]:
        raise ArtclfError(f"no '{split}' split in the shard set (has {sorted(info['splits'])})")
    urls = info["splits"][split]["urls"][rank::world_size]
    lengths = _lengths(info["splits"][split])
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls) if urls else _Nothing(),
        wds.split_by_worker,
        partial(tar_samples, lengths=lengths),
        partial(_decode_eval, pre=pre),
        partial(_batches, batch_size=batch_size, partial_last=True),
    )
    return _loader(pipeline, min(workers, max(1, len(urls))), timeout, pin_memory)


def _lengths(split: dict) -> dict[str, int]:
    """shard URL -> samples it holds (_info.json; none known for a hand-made shard list)."""
    return dict(zip(split["urls"], split["shard_lengths"], strict=True)) if "shard_lengths" in split else {}


def _loader(
    pipeline: wds.DataPipeline, workers: int, timeout: float, pin_memory: bool = False
) -> wds.WebLoader:
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    # PyTorch's DataLoader refuses a timeout without workers; in-process reads just block.
    return wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        timeout=timeout if workers else 0,
        worker_init_fn=ignore_stop_signals if workers else None,
        pin_memory=pin_memory,
    )


class _Nothing(torch.utils.data.IterableDataset):
    """The shard list of a rank that has no eval shard (more ranks than shards)."""

    def __iter__(self):
        return iter(())
