"""The input pipeline over WebDataset shards (disk or ``s3://``): what train and evaluate share.

- :class:`Batch`, what every loader yields; :func:`loader`, the DataLoader around a pipeline.
- The sample index (``_index.json``, written by ``artclf shard``): each sample's key and the
  byte span of its tar members, so one sample is one ranged read (:func:`read_sample`). The
  train stream (:mod:`artclf.train.stream`) reads in the exact order of :mod:`artclf.train.order`
  with it.
- Eval: rank r reads shards r, r+W, …; its workers split those; partial last batch, keys
  carried along, so every sample is seen exactly once across ranks.

Failures. A permanent storage answer (:class:`artclf.storage.PermanentStorageError`: access
denied or expired credentials, no such bucket, key or file, no credentials at all) raises at
once, naming the URL and the reason: the rank would otherwise stall while its peers die at
the collective timeout. An outage (unreachable endpoint, 5xx, throttling) is waited out by
storage, up to its patience, and costs time, not samples; past the patience
:class:`artclf.storage.StorageUnavailable` raises: the store is down, the shard not broken.
Anything else, a sample that fails to decode or a broken shard (bytes that are no tar, a
shard without samples, an object replaced while it was read), is skipped; the batch carries
the failed keys (or shard URLs) so the caller counts and reports them. Exceptions in
DataLoader workers reach the caller as PyTorch re-raises them: same type, the worker's
traceback and message (URL included) in the text. ``timeout`` (seconds, with workers only)
ends a read that stalls without failing.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from artclf import storage
from artclf.errors import ArtclfError
from artclf.transforms import Preprocess, decode, eval_image
from artclf.workers import ignore_stop_signals


@dataclass
class Batch:
    images: torch.Tensor | list[torch.Tensor]  # uint8 N×3×H×W; with --gpu-decode, encoded JPEGs
    labels: torch.Tensor  # int64 N
    keys: list[str]
    failed: list[str] = field(default_factory=list)  # since the last batch: keys, or "URL: cause" of a shard
    lost: int = 0  # samples not read since the last batch (a failed shard: all it had left)
    aug: list[int] = field(default_factory=list)  # train: each sample's augmentation seed

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader's pin-memory thread calls this), so the copy to
        the GPU with ``non_blocking=True`` is asynchronous."""
        images = (
            [x.pin_memory() for x in self.images]
            if isinstance(self.images, list)
            else self.images.pin_memory()
        )
        return Batch(images, self.labels.pin_memory(), self.keys, self.failed, self.lost, self.aug)


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


# ---- the sample index: where each sample's tar members lie in its shard -------------------------

INDEX = "_index.json"  # beside _info.json: per split, each shard's sample keys and byte spans


def tar_spans(stream: BinaryIO) -> tuple[list[str], list[tuple[int, int]]]:
    """Keys and ``(offset, size)`` byte spans of the samples of one tar, in order, read from
    its headers alone (streamed, never seeks: a file or an S3 body). A sample's span runs from
    its first member's header to the padded end of its last member, so reading those bytes
    gives a small tar of that sample alone (:func:`read_sample`). Keys are webdataset's: the
    member name up to the first dot of its last path component."""
    keys: list[str] = []
    spans: list[tuple[int, int]] = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            if not m.isfile():
                continue
            base, name = m.name.rpartition("/")[::2]
            key = f"{base}/{name.split('.', 1)[0]}" if base else name.split(".", 1)[0]
            end = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if keys and keys[-1] == key:
                spans[-1] = (spans[-1][0], end - spans[-1][0])
            else:
                keys.append(key)
                spans.append((m.offset, end - m.offset))
    return keys, spans


@dataclass(frozen=True)
class SampleIndex:
    """Every sample of a split, flattened in shard order then tar order: its shard's URL, the
    byte span of its members and its key. Position ``i`` here is the sample's identity in the
    train order (:mod:`artclf.train.order`)."""

    urls: list[str]
    shard: np.ndarray  # int32 N: index into urls
    offset: np.ndarray  # int64 N
    size: np.ndarray  # int64 N
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def digest(self) -> str:
        """sha256 of the shards' names, keys and spans: the same data wherever it is stored."""
        h = hashlib.sha256()
        h.update(json.dumps([u.rsplit("/", 1)[-1] for u in self.urls]).encode())
        h.update(json.dumps(self.keys).encode())
        for a in (self.shard, self.offset, self.size):
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.hexdigest()

    @classmethod
    def from_shards(cls, urls: list[str], keys: list[list[str]], spans: list[list]) -> SampleIndex:
        lens = [len(k) for k in keys]
        flat = np.asarray([s for per in spans for s in per], dtype=np.int64).reshape(-1, 2)
        return cls(
            list(urls),
            np.repeat(np.arange(len(urls), dtype=np.int32), lens),
            flat[:, 0].copy(),
            flat[:, 1].copy(),
            [k for per in keys for k in per],
        )


def index_shards(urls: list[str]) -> SampleIndex:
    """Index shards by reading their tar headers (each shard read once, start to end): for
    shard lists without ``_index.json`` (hand-made, or packed before shard wrote the index)."""
    keys, spans = [], []
    for url in urls:
        try:
            with storage.open_read(url) as stream:
                k, s = tar_spans(stream)
        except (storage.PermanentStorageError, storage.StorageUnavailable) as e:
            raise type(e)(f"{url}: {failure_reason(e, url)}") from None
        except (tarfile.TarError, OSError, ArtclfError) as e:
            warnings.warn(
                f"{url}: cannot index ({failure_reason(e, url)}); its samples are left out", stacklevel=2
            )
            k, s = [], []
        keys.append(k)
        spans.append(s)
    return SampleIndex.from_shards(urls, keys, spans)


def train_index(info: dict, url: str | None = None) -> SampleIndex:
    """The train split's :class:`SampleIndex`: from ``_index.json`` beside ``_info.json``
    (``url``: the shard set), else by reading the shards' headers (a warning says so)."""
    split = info["splits"]["train"]
    if url is not None and storage.exists(index_url := storage.join(url, INDEX)):
        entry = json.loads(storage.read_bytes(index_url))["splits"]["train"]
        by_name = dict(zip(entry["filenames"], zip(entry["keys"], entry["spans"], strict=True), strict=True))
        missing = [f for f in split["filenames"] if f not in by_name]
        if missing:
            raise ArtclfError(f"{index_url}: no entry for {missing[:3]}; rerun `artclf shard` to rewrite it")
        found = [by_name[f] for f in split["filenames"]]
        return SampleIndex.from_shards(split["urls"], [k for k, _ in found], [s for _, s in found])
    if url is not None:
        warnings.warn(
            f"{storage.join(url, INDEX)}: not found (a shard set packed before shard wrote the index); "
            "reading every train shard's headers once to index it. `artclf shard` writes the index",
            stacklevel=2,
        )
    return index_shards(split["urls"])


def read_sample(index: SampleIndex, i: int, where: Callable[[str], str] | None = None) -> dict:
    """Sample ``i`` of ``index`` as webdataset's tar reader gives it (``__key__``, ``__url__``,
    one entry of bytes per member suffix): one ranged read of its span, nothing else.
    ``where``: shard URL -> where to read it (a local copy, :mod:`artclf.train.shardcache`)."""
    url = index.urls[index.shard[i]]
    data = storage.read_range(where(url) if where else url, int(index.offset[i]), int(index.size[i]))
    sample: dict[str, Any] = {"__key__": index.keys[i], "__url__": url}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                sample[m.name.rpartition("/")[2].split(".", 1)[1]] = f.read() if f else b""
    if not sample.keys() - {"__key__", "__url__"}:
        raise ArtclfError(f"no members at bytes {index.offset[i]}+{index.size[i]}")
    return sample


def worker_info() -> tuple[int, int]:
    """(this DataLoader worker's id, the number of workers); (0, 1) in the main process."""
    w = get_worker_info()
    return (w.id, w.num_workers) if w is not None else (0, 1)


def failure_reason(e: Exception, url: str) -> str:
    """One line for a failed shard or sample read; webdataset's tar iterators append
    `` @ <stream>`` and the URL to an exception's args, which would print as a tuple."""
    text = str(e.args[0]).split(" @ <", 1)[0] if e.args else ""
    text = text if isinstance(e, ArtclfError) else f"{type(e).__name__}: {text}"
    return text.removeprefix(f"{url}: ")


def tar_samples(shards: Iterator[dict], lengths: dict[str, int] | None = None) -> Iterator[dict]:
    """tar → samples, each shard read once start to end. A permanent storage answer raises, and
    so does an outage past storage's patience; any other failed shard becomes one ``__error__``
    marker carrying ``__lost__``, the samples of the shard not read (``lengths``: url ->
    samples, from _info.json), and a warning naming the shard goes to stderr."""
    for shard in shards:
        url, n = shard["url"], 0
        try:
            with storage.open_read(url) as stream:
                files = wds.tariterators.tar_file_expander(iter([{"url": url, "stream": stream}]))
                for sample in wds.tariterators.group_by_keys(files):
                    n += 1
                    yield sample
        except (storage.PermanentStorageError, storage.StorageUnavailable) as e:
            raise type(e)(f"{url}: {failure_reason(e, url)}") from None
        except Exception as e:  # storage waited out any outage; one broken shard must not end the pass
            cause = failure_reason(e, url)
        else:
            if n:
                continue
            cause = "no samples in the shard"
        length = (lengths or {}).get(url)
        lost = max(length - n, 0) if length is not None else 0
        of = f"{lost} of its {length} samples unread" if length is not None else f"{n} samples read"
        print(f"artclf: skipping shard {url}: {cause} ({of})", file=sys.stderr, flush=True)
        yield {"__key__": url, "__error__": cause, "__lost__": lost}


def _decode_eval(src: Iterator[dict], pre: Preprocess) -> Iterator[tuple]:
    """(tensor, label, key), or for what could not be read (None, samples lost, what): a sample
    that fails to decode is (None, 1, key), a failed shard (None, its unread samples, "URL: cause")."""
    for sample in src:
        key = sample.get("__key__", "?")
        if "__error__" in sample:
            yield None, sample["__lost__"], f"{key}: {sample['__error__']}"
            continue
        try:
            yield eval_image(decode(sample["jpg"]), pre), int(sample["cls"]), key
        except Exception:  # a corrupt sample is counted by the caller, never fatal
            yield None, 1, key


def _batches(items: Iterator[tuple], batch_size: int) -> Iterator[Batch]:
    """Batches of ``batch_size`` and a partial last one; the failed items ride along with the
    next batch, or with an empty one at the end."""
    xs, ys, keys, failed, lost = [], [], [], [], 0
    for x, y, key in items:
        if x is None:  # y: samples lost
            failed.append(key)
            lost += y
            continue
        xs.append(x)
        ys.append(y)
        keys.append(key)
        if len(xs) == batch_size:
            yield Batch(torch.stack(xs), torch.tensor(ys), keys, failed, lost)
            xs, ys, keys, failed, lost = [], [], [], [], 0
    if xs:
        yield Batch(torch.stack(xs), torch.tensor(ys), keys, failed, lost)
    elif failed:  # nothing left to carry them: an empty batch reports them
        empty = torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        yield Batch(*empty, [], failed, lost)


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
    persistent: bool = False,
) -> wds.WebLoader:
    """Every sample of ``split`` exactly once across all ranks (partial last batches), at each
    iteration; broken shards are skipped and counted, a permanent storage error (or an outage
    past storage's patience) raises; ``timeout`` as in :func:`loader`; ``persistent``: the
    workers are forked at the first iteration and kept for the next ones (a loader iterated
    once per epoch)."""
    if split not in info["splits"]:
        raise ArtclfError(f"no '{split}' split in the shard set (has {sorted(info['splits'])})")
    urls = info["splits"][split]["urls"][rank::world_size]
    lengths = _lengths(info["splits"][split])
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls) if urls else _Nothing(),
        wds.split_by_worker,
        partial(tar_samples, lengths=lengths),
        partial(_decode_eval, pre=pre),
        partial(_batches, batch_size=batch_size),
    )
    return loader(pipeline, min(workers, max(1, len(urls))), timeout, pin_memory, persistent)


def _lengths(split: dict) -> dict[str, int]:
    """shard URL -> samples it holds (_info.json; none known for a hand-made shard list)."""
    return dict(zip(split["urls"], split["shard_lengths"], strict=True)) if "shard_lengths" in split else {}


def loader(
    dataset: torch.utils.data.IterableDataset,
    workers: int,
    timeout: float,
    pin_memory: bool = False,
    persistent: bool = False,
) -> wds.WebLoader:
    """A DataLoader over ``dataset``'s own batches; its workers ignore stop signals
    (:func:`artclf.workers.ignore_stop_signals`). ``timeout``: seconds per batch (0: none);
    ``persistent``: workers kept between iterations. Each iteration draws its workers' base
    seed from the loader's own generator, not torch's global one: the trainer's RNG stream
    (dropout, restored from a checkpoint on resume) is the same however often, and in which
    process, its loaders were started (the samples' augmentation has seeds of its own)."""
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    # PyTorch's DataLoader refuses a timeout without workers; in-process reads just block.
    return wds.WebLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        timeout=timeout if workers else 0,
        worker_init_fn=ignore_stop_signals if workers else None,
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator(),
    )


class _Nothing(torch.utils.data.IterableDataset):
    """The shard list of a rank that has no eval shard (more ranks than shards)."""

    def __iter__(self):
        return iter(())
