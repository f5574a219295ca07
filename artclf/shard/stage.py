"""``artclf shard --work WORK --out URL``: pack the split into WebDataset shards, pre-resized.

Each kept image of each split is opened upright in RGB, shrunk once so its shorter side is
``--store-size`` (never enlarged) and re-encoded, so training decodes ~0.3 MP instead of up
to 11 MP. Samples: ``__key__``, ``jpg``, ``cls`` (label as text), ``json`` (artist, source
path, original size, group). ``URL`` is a folder or ``s3://bucket/prefix``.

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

import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from artclf import __version__, manifest, storage
from artclf.artists import SAMPLE_TRUTH, class_names, fold
from artclf.config import arg, stage_main
from artclf.data import INDEX, tar_spans
from artclf.errors import ArtclfError
from artclf.images import open_rgb
from artclf.manifest import SPLITS

INFO = "_info.json"
RECORDS = "_shards"


@dataclass(frozen=True)
class ShardConfig:
    work: Path = field(default=Path("work"), metadata=arg("work folder holding manifest.jsonl (after split)"))
    out: str = field(default="shards", metadata=arg("folder or s3://bucket/prefix for the shards"))
    data_dir: Path | None = field(
        default=None, metadata=arg("data set root (default: from ingest_report.json)")
    )
    store_size: int = field(default=576, metadata=arg("px of the shorter side as stored (never upscaled)"))
    quality: int = field(default=90, metadata=arg("JPEG quality of the stored images"))
    shard_samples: int = field(
        default=100, metadata=arg("samples per shard (more shards than ranks × workers)")
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
        if not 32 <= self.store_size <= 4096 or not 1 <= self.quality <= 100 or self.shard_samples < 1:
            raise ValueError("--store-size in [32, 4096], --quality in [1, 100], --shard-samples >= 1")
        if self.part is not None and not 0 <= self.part < self.num_parts:
            raise ValueError(f"--part must be in [0, --num-parts={self.num_parts}), got {self.part}")
        if self.part is not None and self.merge:
            raise ValueError("--part and --merge exclude each other: pack the parts first, then merge once")


def sample_key(path: str) -> str:
    """``images/images/Vincent_van_Gogh/Vincent_van_Gogh_123.jpg`` -> ``Vincent_van_Gogh_123``.

    ASCII only, no dots: webdataset splits a member name at its first dot into key and field.
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", fold(Path(path).stem))


def plan(rows: list[dict], shard_samples: int, seed: int) -> dict[str, list[list[dict]]]:
    """Split -> shards -> samples. Sorted, then shuffled with the seed so that each shard mixes
    artists (a small shuffle buffer then suffices); deterministic for a manifest and seed."""
    out = {}
    for n, name in enumerate(SPLITS):
        rs = sorted((r for r in rows if r.get("keep") and r.get("split") == name), key=lambda r: r["path"])
        if not rs:
            continue
        order = np.random.default_rng([seed, n]).permutation(len(rs))
        rs = [rs[i] for i in order]
        out[name] = [rs[i : i + shard_samples] for i in range(0, len(rs), shard_samples)]
    keys = [sample_key(r["path"]) for shards in out.values() for s in shards for r in s]
    if len(set(keys)) != len(keys):
        dup = sorted(k for k in set(keys) if keys.count(k) > 1)[:5]
        raise ArtclfError(f"sample keys collide after ASCII folding: {dup}; rename those files")
    return out


def encode(path: Path, store_size: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """Upright RGB, shorter side shrunk to ``store_size`` (draft decoding), re-encoded JPEG."""
    im = open_rgb(path, min_side=store_size)
    scale = store_size / min(im.size)
    if scale < 1:
        im = im.resize(
            (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
            Image.Resampling.BICUBIC,
            reducing_gap=3.0,
        )
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=False)
    return buf.getvalue(), im.size


def _plan_hash(samples: list[dict], cfg_key: tuple) -> str:
    ids = [(sample_key(r["path"]), r["sha256"], r["label"]) for r in samples]
    return hashlib.sha256(json.dumps([ids, cfg_key]).encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    url: str
    record_url: str
    samples: list[dict]
    data_dir: Path
    store_size: int
    quality: int
    plan_hash: str
    endpoint: str | None
    patience: float = storage.DEFAULT_PATIENCE_S


def write_shard(job: Job) -> dict:
    """Pack one shard in a temp file, upload it (atomic), then write its record."""
    storage.set_endpoint(job.endpoint)
    storage.set_patience(job.patience)
    with tempfile.TemporaryDirectory(prefix="artclf-shard-") as tmp:
        local = Path(tmp) / "shard.tar"
        with open(local, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as w:
            for r in job.samples:
                jpg, stored = encode(job.data_dir / r["path"], job.store_size, job.quality)
                meta = {
                    "artist": r["artist"],
                    "path": r["path"],
                    "width": r["width"],
                    "height": r["height"],
                    "group": r["group"],
                    "stored": list(stored),
                }
                w.write(
                    {
                        "__key__": sample_key(r["path"]),
                        "jpg": jpg,
                        "cls": str(r["label"]).encode(),
                        "json": json.dumps(meta, ensure_ascii=False).encode(),
                    }
                )
        data = local.read_bytes()
        keys, spans = tar_spans(io.BytesIO(data))
        if keys != [sample_key(r["path"]) for r in job.samples]:
            raise ArtclfError(
                f"{job.url}: the tar's keys {keys[:3]}… are not the plan's"
            )  # a webdataset change
        storage.upload_file(local, job.url)
    record = {
        "name": job.url.rsplit("/", 1)[-1],
        "num_samples": len(job.samples),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "plan": job.plan_hash,
        "keys": keys,
        "spans": [list(s) for s in spans],  # (offset, size) of each sample's members
    }
    storage.write_bytes(job.record_url, json.dumps(record).encode())
    return record


def _sha256(url: str) -> str:
    h = hashlib.sha256()
    with storage.open_read(url) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _written(url: str, denied: list[str]) -> bool:
    """Whether an earlier run wrote ``url``. A HEAD answers 403 for a missing key to credentials
    without s3:ListBucket, and for wrong ones: a GET's answer tells which. The first counts as
    not written (``url`` goes to ``denied``); a refusal of the keys themselves raises."""
    try:
        return storage.exists(url)
    except storage.PermanentStorageError as e:
        if e.status != 403:
            raise
    try:
        storage.open_read(url).close()  # the GET alone: its answer carries the reason
        return True
    except storage.PermanentStorageError as e:
        if e.code != "AccessDenied":  # InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken, …
            raise
    denied.append(url)
    return False


def existing_record(job: Job, denied: list[str] | None = None) -> dict | None:
    """The shard's record when shard and record are complete and match this plan; else None.
    ``denied``: collects the URLs whose HEAD answered 403 (counted as not written)."""
    denied = [] if denied is None else denied
    if not _written(job.record_url, denied) or not _written(job.url, denied):
        return None
    record = json.loads(storage.read_bytes(job.record_url))
    if record.get("plan") != job.plan_hash or storage.size(job.url) != record["bytes"]:
        return None
    if "spans" not in record:  # packed before shard wrote the sample index: packed again
        return None
    return record if _sha256(job.url) == record["sha256"] else None


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
                        _plan_hash(samples, cfg_key),
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
    split_jobs = _jobs(cfg, plan(rows, cfg.shard_samples, cfg.seed), root)
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
