"""Which sample goes into which shard: the sizes of each split's shards, then the samples.

``--shard-samples auto`` sizes each split for the readers that will read it (``--readers`` GPUs,
``--reader-workers`` DataLoader workers each), the rule of ``shards/README.md``:

- start from shards of about :data:`TARGET_SAMPLES` (few large objects: cheap S3 reads,
  resumable packing in steps worth keeping);
- train: at least :data:`TRAIN_SHARDS_PER_READER` shards for each (GPU, worker). artclf's own
  trainer reads train sample by sample (``_index.json``), whatever the shard count, but a
  plain WebDataset or timm reader splits the shards by node and worker, and a reader's share
  differs from another's by up to one shard: several each keep them within ~1/k of each other;
- val and test: one shard for each (GPU, worker) (evaluate reads shards ``rank::world``, then
  splits a rank's shards among its workers);
- no shard below :data:`MIN_SAMPLES` (below it an S3 GET is mostly latency), except that every
  GPU gets at least one shard of every split: a rank without one evaluates nothing, and a
  plain ``wds.split_by_node`` reader with no shard hangs the job at the next collective.

A split's samples are then cut into that many shards of near-equal length (they differ by one
at most: no short last shard). ``--shard-samples N`` keeps shards of N, the last one shorter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artclf.artists import fold
from artclf.errors import ArtclfError
from artclf.manifest import SPLITS

TARGET_SAMPLES = 100  # the former fixed default: ~7 MB at 576 px, what one reader wants per GET
MIN_SAMPLES = 8  # ~0.6 MB at 576 px: an S3 GET of less is mostly its ~20-50 ms first byte
TRAIN_SHARDS_PER_READER = 4  # train shards per (GPU, worker) for plain WebDataset readers
EVAL_SHARDS_PER_READER = 1  # val/test shards per (GPU, worker)


@dataclass(frozen=True)
class Sizing:
    """One split's shards: ``lengths[j]`` samples in shard j, and why that many."""

    split: str
    lengths: tuple[int, ...]
    why: str

    @property
    def samples(self) -> int:
        return sum(self.lengths)

    @property
    def shards(self) -> int:
        return len(self.lengths)


def even_lengths(n: int, shards: int) -> tuple[int, ...]:
    """``n`` samples in ``shards`` shards whose lengths differ by one at most, longer ones first."""
    q, r = divmod(n, shards)
    return tuple(q + 1 if j < r else q for j in range(shards))


def auto_sizing(split: str, n: int, readers: int, workers: int) -> Sizing:
    """The shards of a split of ``n`` samples for ``readers`` GPUs × ``workers`` workers each."""
    per_reader = TRAIN_SHARDS_PER_READER if split == "train" else EVAL_SHARDS_PER_READER
    by_target = math.ceil(n / TARGET_SAMPLES)
    by_readers = readers * workers * per_reader
    shards = max(by_target, by_readers)
    why = f"{per_reader} shard{'s' if per_reader > 1 else ''} a GPU worker"
    if shards == by_target:
        why = f"~{TARGET_SAMPLES} samples a shard, already {per_reader}+ a GPU worker"
    if shards > n // MIN_SAMPLES:
        shards = max(1, n // MIN_SAMPLES)
        why = f"the floor of {MIN_SAMPLES} samples a shard allows no more ({per_reader} a GPU worker wanted)"
    if shards < min(n, readers):
        shards = min(n, readers)
        why = f"one a GPU, even below the floor of {MIN_SAMPLES} samples a shard"
    return Sizing(split, even_lengths(n, shards), why)


def fixed_sizing(split: str, n: int, shard_samples: int) -> Sizing:
    """``shard_samples`` a shard, the last one holding what is left."""
    lengths = tuple(min(shard_samples, n - i) for i in range(0, n, shard_samples))
    return Sizing(split, lengths, f"--shard-samples {shard_samples}")


def sizings(
    counts: dict[str, int], shard_samples: int | str, readers: int, workers: int
) -> dict[str, Sizing]:
    """split -> its shards, for ``--shard-samples`` ``auto`` or a number."""
    if shard_samples == "auto":
        return {s: auto_sizing(s, n, readers, workers) for s, n in counts.items()}
    return {s: fixed_sizing(s, n, int(shard_samples)) for s, n in counts.items()}


def describe(z: Sizing, readers: int, workers: int) -> str:
    """``train: 6480 samples in 512 shards of 12-13, 32+ a GPU, 4+ a GPU worker (16 GPUs × 8
    workers; why)``: what each reader gets when the shards are split by node, then by worker."""
    lo, hi = min(z.lengths), max(z.lengths)
    size = f"{lo}" if lo == hi else f"{lo}-{hi}"
    per_gpu, per_worker = z.shards // readers, z.shards // (readers * workers)
    gpus = f"{readers} GPU{'s' if readers > 1 else ''} × {workers} worker{'s' if workers > 1 else ''}"
    text = (
        f"{z.split}: {z.samples} samples in {z.shards} shards of {size}, {per_gpu}+ a GPU, "
        f"{per_worker}+ a GPU worker ({gpus}; {z.why})"
    )
    if z.shards < readers:
        # artclf train reads by sample (_index.json); a plain WebDataset reader splits shards
        effect = "plain WebDataset readers would hang" if z.split == "train" else "they evaluate nothing"
        text += f"; warning: {readers - z.shards} of {readers} GPUs get no {z.split} shard ({effect})"
    return text


def sample_key(path: str) -> str:
    """``images/images/Vincent_van_Gogh/Vincent_van_Gogh_123.jpg`` -> ``Vincent_van_Gogh_123``.

    ASCII only, no dots: webdataset splits a member name at its first dot into key and field.
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", fold(Path(path).stem))


def split_rows(rows: list[dict], seed: int) -> dict[str, list[dict]]:
    """split -> its kept rows, sorted, then shuffled with the seed so that each shard mixes
    artists (a small shuffle buffer then suffices); deterministic for a manifest and seed."""
    out = {}
    for n, name in enumerate(SPLITS):
        rs = sorted((r for r in rows if r.get("keep") and r.get("split") == name), key=lambda r: r["path"])
        if rs:
            order = np.random.default_rng([seed, n]).permutation(len(rs))
            out[name] = [rs[i] for i in order]
    return out


def plan(by_split: dict[str, list[dict]], sizes: dict[str, Sizing]) -> dict[str, list[list[dict]]]:
    """split -> shards -> samples, cut as ``sizes`` says; sample keys must be unique."""
    out = {}
    for name, rs in by_split.items():
        ends = np.cumsum((0, *sizes[name].lengths))
        out[name] = [rs[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]
    keys = [sample_key(r["path"]) for shards in out.values() for s in shards for r in s]
    if len(set(keys)) != len(keys):
        dup = sorted(k for k in set(keys) if keys.count(k) > 1)[:5]
        raise ArtclfError(f"sample keys collide after ASCII folding: {dup}; rename those files")
    return out
