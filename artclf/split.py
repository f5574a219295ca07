"""``artclf split --work WORK [--ratios 0.8,0.1,0.1] [--seed N]``: an honest train/val/test split.

Stratified by artist, grouped by duplicate group: the kept images are dealt out per artist
to hit each split's share within one image (largest remainder, every split at least one
image), and every other member of a duplicate group follows its kept image, so no group
straddles two splits. The check runs on every write: a leaky split is refused.
``--ratios 0.8,0.2`` is the published two-way split (the model is then chosen and scored on
the same images; a warning says so). Writes ``split`` into the manifest and
``WORK/split.json``.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artclf import manifest
from artclf.atomic import write_json
from artclf.config import arg, floats, stage_main
from artclf.errors import ArtclfError
from artclf.manifest import SPLITS


@dataclass(frozen=True)
class SplitConfig:
    work: Path = field(default=Path("work"), metadata=arg("work folder holding manifest.jsonl (after dedup)"))
    ratios: tuple[float, ...] = field(
        default=(0.8, 0.1, 0.1), metadata=arg("train,val[,test] fractions, summing to 1", parse=floats)
    )
    seed: int = field(default=0, metadata=arg("shuffles which images go where"))

    def __post_init__(self) -> None:
        if len(self.ratios) not in (2, 3) or min(self.ratios) <= 0 or not math.isclose(sum(self.ratios), 1):
            raise ValueError(f"--ratios must be 2 or 3 positive fractions summing to 1, got {self.ratios}")


def quotas(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Largest-remainder counts for ``n`` items with at least one per split (needs n >= splits)."""
    raw = [n * r for r in ratios]
    counts = [max(1, math.floor(x)) for x in raw]
    while sum(counts) > n:  # the minimum of one pushed us over: take where it hurts least
        over = [i for i in range(len(counts)) if counts[i] > 1]
        counts[max(over, key=lambda i: counts[i] - raw[i])] -= 1
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(rows: list[dict], ratios: tuple[float, ...], seed: int) -> dict[int, str]:
    """Duplicate group id -> split, dealt per artist over the groups that have a kept image."""
    names = SPLITS[: len(ratios)]
    by_artist: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r.get("keep"):
            by_artist[r["artist"]].append(r["group"])
    rng = np.random.default_rng(seed)
    split_of: dict[int, str] = {}
    for artist in sorted(by_artist):
        groups = sorted(set(by_artist[artist]))
        if len(groups) < len(ratios):
            raise ArtclfError(
                f"artist {artist!r} has {len(groups)} kept image(s): too few for {len(ratios)} splits "
                f"{dict(zip(names, ratios, strict=True))}; lower the split count or add images"
            )
        rng.shuffle(groups)
        start = 0
        for name, count in zip(names, quotas(len(groups), ratios), strict=True):
            split_of.update((g, name) for g in groups[start : start + count])
            start += count
    return split_of


def check_no_leak(rows: list[dict]) -> None:
    """Refuse any duplicate group whose members sit in more than one split."""
    seen: dict[int, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("split"):
            seen[r["group"]].add(r["split"])
    leaks = {g: sorted(s) for g, s in seen.items() if len(s) > 1}
    if leaks:
        raise ArtclfError(
            f"leaky split refused: duplicate group(s) in several splits: {dict(list(leaks.items())[:5])}"
        )


def split(cfg: SplitConfig) -> dict:
    rows = manifest.read_manifest(cfg.work)
    if any("keep" not in r for r in rows):
        raise ArtclfError(f"{manifest.manifest_path(cfg.work)}: no dedup fields; run `artclf dedup` first")
    split_of = assign_splits(rows, cfg.ratios, cfg.seed)
    for r in rows:
        # Dropped copies follow their group, so a later `--keep-mislabeled` or a policy change
        # cannot put a twin on the other side; groups with nothing kept get no split.
        r["split"] = split_of.get(r["group"]) if r["group"] is not None else None
    check_no_leak(rows)
    path = manifest.write_manifest(cfg.work, rows)
    used = [r for r in rows if r.get("keep")]
    counts = {n: Counter(r["artist"] for r in used if r["split"] == n) for n in SPLITS[: len(cfg.ratios)]}
    summary = {
        "ratios": list(cfg.ratios),
        "seed": cfg.seed,
        "two_way": len(cfg.ratios) == 2,
        "images": {n: sum(c.values()) for n, c in counts.items()},
        "per_artist": {a: {n: counts[n][a] for n in counts} for a in sorted({r["artist"] for r in used})},
        "manifest_sha256": manifest.manifest_sha256(cfg.work),
    }
    write_json(cfg.work / "split.json", summary)
    if summary["two_way"]:
        print(
            "split: warning: two-way split: the model is chosen and scored on the same 'val' images, "
            "so its score is optimistic (the published 0.87/0.84 was measured this way)",
            file=sys.stderr,
        )
    print(
        f"split: {summary['images']} kept images, {len(summary['per_artist'])} artists, "
        f"no duplicate group straddles splits -> {path}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    return stage_main(SplitConfig, split, "artclf split", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
