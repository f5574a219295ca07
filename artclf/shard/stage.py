"""``artclf shard --work WORK --out URL``: pack the split into WebDataset shards, pre-resized.

Each kept image of each split is opened upright in RGB, shrunk once so its shorter side is
``--store-size`` (never enlarged) and re-encoded, so training decodes ~0.3 MP instead of up
to 11 MP. Samples: ``__key__``, ``jpg``, ``cls`` (label as text), ``json`` (artist, source
path, original size, group). ``URL`` is a folder or ``s3://bucket/prefix``.

``--shard-samples auto`` (the default) sizes each split's shards for the GPUs that will read
the set (``--readers``, all nodes; ``--reader-workers`` DataLoader workers each): every GPU at
least one shard of every split, each GPU worker 4 train shards and 1 val/test shard where the
split is large enough, no shard below 8 samples unless a GPU would otherwise get none. The
sizes chosen and why are printed; the rule and the Kaggle numbers are in shards/README.md.

Atomic and resumable: a shard appears under its final name only when complete, and its
record (``_shards/<name>.json``: keys, each sample's byte span, bytes, sha256) follows; a
rerun skips shards whose record matches the plan and whose bytes still hash to it.
``--part i --num-parts n`` packs every n-th shard (SLURM array, Indexed Job); ``--merge``
then writes ``_info.json`` and the sample index ``_index.json`` (each sample's key and byte
span per shard, for ranged reads).
``artclf shard --verify URL`` re-reads everything and exits 1 on any mismatch. Credentials
that may write but not list (a HEAD of a missing key answers 403) cannot tell what a run
wrote: shard says so once and packs everything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from artclf import __version__, manifest, storage
from artclf.artists import SAMPLE_TRUTH, class_names, fold
from artclf.config import arg, stage_main
from artclf.data import INDEX
from artclf.errors import ArtclfError
from artclf.shard.job import Job, existing_record, plan_hash, write_shard
from artclf.shard.layout import describe, plan, sizings, split_rows

INFO = "_info.json"
RECORDS = "_shards"


def samples_or_auto(text: str) -> int | str:
    """``--shard-samples``: ``auto`` or a whole number."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of samples, got {text!r}") from None


@dataclass(frozen=True)
class ShardConfig:
    work: Path = field(default=Path("work"), metadata=arg("work folder holding manifest.jsonl (after split)"))
    out: str = field(default="shards", metadata=arg("folder or s3://bucket/prefix for the shards"))
    data_dir: Path | None = field(
        default=None, metadata=arg("data set root (default: from ingest_report.json)")
    )
    store_size: int = field(default=576, metadata=arg("px of the shorter side as stored (never upscaled)"))
    quality: int = field(default=90, metadata=arg("JPEG quality of the stored images"))
    shard_samples: int | str = field(
        default="auto",
        metadata=arg(
            "samples per shard, or auto: per split, enough shards for --readers GPUs × "
            "--reader-workers workers, none below 8 samples (shards/README.md)",
            parse=samples_or_auto,
        ),
    )
    readers: int = field(
        default=16,
        metadata=arg("GPUs that will read the set, all nodes (for auto; 16: 2 nodes × 8 GPUs)"),
    )
    reader_workers: int = field(
        default=8, metadata=arg("DataLoader workers per GPU that will read it (for auto; train's --workers)")
    )
    seed: int = field(default=0, metadata=arg("order of samples across shards"))
    workers: int = field(default=0, metadata=arg("packing processes (0 = all cores)"))
    part: int | None = field(default=None, metadata=arg("pack only shards i, i+n, … (0-based), then stop"))
    num_parts: int = field(default=1, metadata=arg("number of parts (SLURM array / Indexed Job size)"))
    merge: bool = field(default=False, metadata=arg("write _info.json from the records of all parts"))
    verify: str | None = field(default=None, metadata=arg("re-read the shards at this URL and check them"))
    endpoint_url: str | None = field(default=None, metadata=arg("S3 endpoint (default: AWS_ENDPOINT_URL)"))
    storage_patience: float = field(
        default=storage.DEFAULT_PATIENCE_S,
        metadata=arg(
            "seconds each read or write waits out a storage outage (5xx, unreachable) before failing"
        ),
    )

    def __post_init__(self) -> None:
        if self.storage_patience < 0:
            raise ValueError(f"--storage-patience must be >= 0 seconds, got {self.storage_patience}")
        if not 32 <= self.store_size <= 4096 or not 1 <= self.quality <= 100:
            raise ValueError("--store-size in [32, 4096], --quality in [1, 100]")
        fixed = isinstance(self.shard_samples, int) and self.shard_samples >= 1
        if self.shard_samples != "auto" and not fixed:
            raise ValueError(f"--shard-samples must be auto or a number >= 1, got {self.shard_samples!r}")
        if self.readers < 1 or self.reader_workers < 1:
            raise ValueError(
                f"--readers and --reader-workers must be >= 1, got {self.readers} and {self.reader_workers}"
            )
        if self.part is not None and not 0 <= self.part < self.num_parts:
            raise ValueError(f"--part must be in [0, --num-parts={self.num_parts}), got {self.part}")
        if self.part is not None and self.merge:
            raise ValueError("--part and --merge exclude each other: pack the parts first, then merge once")


def _jobs(cfg: ShardConfig, layout: dict[str, list[list[dict]]], data_dir: Path) -> list[tuple[str, Job]]:
    cfg_key = (cfg.store_size, cfg.quality)
    jobs = []
    for split, shards in layout.items():
        for j, samples in enumerate(shards):
            name = f"{split}-{j:06d}.tar"
            jobs.append(
                (
                    split,
                    Job(
                        storage.join(cfg.out, name),
                        storage.join(cfg.out, f"{RECORDS}/{name}.json"),
                        samples,
                        data_dir,
                        cfg.store_size,
                        cfg.quality,
                        plan_hash(samples, cfg_key),
                        cfg.endpoint_url,
                        cfg.storage_patience,
                    ),
                )
            )
    return jobs


def pack(cfg: ShardConfig, jobs: list[Job]) -> list[dict]:
    """Write the shards of ``jobs`` that are not already complete; records in job order."""
    denied: list[str] = []
    records: list[dict | None] = [existing_record(j, denied) for j in jobs]
    _say_denied(denied)
    todo = [i for i, r in enumerate(records) if r is None]
    if len(todo) < len(jobs):
        print(f"shard: {len(jobs) - len(todo)} of {len(jobs)} shards already complete, kept")
    workers = min(cfg.workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = dict(total=len(todo), desc="shard", unit="shard", mininterval=1.0)
    if workers == 1:
        done = [write_shard(jobs[i]) for i in tqdm(todo, **bar)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            done = list(tqdm(pool.map(write_shard, [jobs[i] for i in todo]), **bar))
    for i, rec in zip(todo, done, strict=True):
        records[i] = rec
    return records  # type: ignore[return-value]


def _say_denied(denied: list[str]) -> None:
    if denied:
        more = f" (and {len(denied) - 1} more)" if len(denied) > 1 else ""
        print(
            f"artclf shard: warning: HEAD of {denied[0]}{more} answered 403: cannot tell what an earlier run "
            "wrote (without s3:ListBucket, S3 answers 403 for a missing key); packing as if nothing was",
            file=sys.stderr,
            flush=True,
        )


def write_info(
    cfg: ShardConfig,
    split_jobs: list[tuple[str, Job]],
    records: list[dict],
    names: list[str],
    artists: list[str],
    root: Path,
) -> dict:
    splits: dict[str, dict] = {}
    for (split, job), rec in zip(split_jobs, records, strict=True):
        s = splits.setdefault(  # timm's `wds` reader needs each split's own `name`
            split,
            {
                "name": split,
                "num_samples": 0,
                "filenames": [],
                "shard_lengths": [],
                "class_counts": [0] * len(names),
            },
        )
        for r in job.samples:  # per-class counts: the trainer picks its flip classes from them
            s["class_counts"][r["label"]] += 1
        s["num_samples"] += rec["num_samples"]
        s["filenames"].append(rec["name"])
        s["shard_lengths"].append(rec["num_samples"])
    info = {
        "name": Path(str(cfg.work)).name or "artclf",
        "version": __version__,
        "splits": splits,
        "classes": names,
        "artists": artists,  # the names as artists.csv writes them, in class order (for people)
        # where the images came from; a set made by `artclf sample-data` says so (model cards show it)
        "data": {"dir": str(root), "generated_sample": (root / SAMPLE_TRUTH).is_file()},
        "store_size": cfg.store_size,
        "quality": cfg.quality,
        # what the shards were sized for (shards/README.md); a reader set of another size still works
        "sizing": {
            "shard_samples": cfg.shard_samples,
            "readers": cfg.readers,
            "reader_workers": cfg.reader_workers,
        },
        "shards": {r["name"]: {k: r[k] for k in ("num_samples", "bytes", "sha256")} for r in records},
        "manifest_sha256": manifest.manifest_sha256(cfg.work),
    }
    index = {
        "version": 1,
        "splits": {
            split: {
                "filenames": [
                    rec["name"] for (sp, _), rec in zip(split_jobs, records, strict=True) if sp == split
                ],
                "keys": [
                    rec["keys"] for (sp, _), rec in zip(split_jobs, records, strict=True) if sp == split
                ],
                "spans": [
                    rec["spans"] for (sp, _), rec in zip(split_jobs, records, strict=True) if sp == split
                ],
            }
            for split in splits
        },
    }
    # the index first: a set with _info.json has its index (the trainer reads both)
    storage.write_bytes(storage.join(cfg.out, INDEX), json.dumps(index, separators=(",", ":")).encode())
    storage.write_bytes(storage.join(cfg.out, INFO), json.dumps(info, indent=2, ensure_ascii=False).encode())
    return info


def shard(cfg: ShardConfig) -> dict | None:
    storage.set_endpoint(cfg.endpoint_url)
    storage.set_patience(cfg.storage_patience)
    if cfg.verify is not None:
        from artclf.shard.verify import verify

        return verify(cfg.verify)
    start = time.perf_counter()
    rows = manifest.read_manifest(cfg.work)
    if not any(r.get("split") for r in rows):
        raise ArtclfError(f"{manifest.manifest_path(cfg.work)}: no split field; run `artclf split` first")
    artists = sorted({r["artist"] for r in manifest.usable(rows)})
    names = class_names(artists)
    display = dict(zip([fold(a) for a in artists], artists, strict=True))
    root = manifest.data_dir(cfg.work, cfg.data_dir)
    by_split = split_rows(rows, cfg.seed)
    n_samples = {k: len(v) for k, v in by_split.items()}
    sizes = sizings(n_samples, cfg.shard_samples, cfg.readers, cfg.reader_workers)
    for z in sizes.values():
        print(f"shard: {describe(z, cfg.readers, cfg.reader_workers)}")
    split_jobs = _jobs(cfg, plan(by_split, sizes), root)
    mine = [i for i in range(len(split_jobs)) if cfg.part is None or i % cfg.num_parts == cfg.part]
    if cfg.merge:
        denied: list[str] = []
        records = [existing_record(job, denied) for _, job in split_jobs]
        _say_denied(denied)
        missing = [job.url for (_, job), r in zip(split_jobs, records, strict=True) if r is None]
        if missing:
            raise ArtclfError(
                f"--merge: {len(missing)} shard(s) missing or incomplete, e.g. {missing[:3]}; "
                "rerun the parts that wrote them"
            )
    else:
        records = pack(cfg, [split_jobs[i][1] for i in mine])
        if cfg.part is not None:
            print(f"shard: part {cfg.part}/{cfg.num_parts}: {len(mine)} shards -> {cfg.out}")
            return None
    info = write_info(cfg, split_jobs, records, names, [display[n] for n in names], root)
    counts = {s: v["num_samples"] for s, v in info["splits"].items()}
    files = {s: len(v["filenames"]) for s, v in info["splits"].items()}
    print(
        f"shard: {counts} samples in {files} shards at {cfg.store_size} px in "
        f"{time.perf_counter() - start:.1f}s -> {storage.join(cfg.out, INFO)}"
    )
    return info


def main(argv: list[str] | None = None) -> int:
    return stage_main(ShardConfig, shard, "artclf shard", __doc__, argv)
