"""One shard: its samples encoded and packed into a tar (atomic upload, then its record), and
the check that lets a rerun keep a shard an earlier run completed.

The record ``_shards/<name>.json`` holds the keys, each sample's byte span, bytes, sha256 and
the plan hash; a shard is kept only when its record matches the plan and its bytes still hash
to it. Credentials that may write but not list (a HEAD of a missing key answers 403) cannot
tell what a run wrote: such a shard counts as not written.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image

from artclf import storage
from artclf.data import tar_spans
from artclf.errors import ArtclfError
from artclf.images import open_rgb
from artclf.shard.layout import sample_key


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


def plan_hash(samples: list[dict], cfg_key: tuple) -> str:
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
