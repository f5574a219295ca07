"""``WORK/manifest.jsonl``: one JSON object per source file; every stage after ingest reads it.

Fields (DESIGN.md): ``path`` (relative to the data set root), ``artist``, ``label``,
``width``, ``height`` (as displayed, after EXIF orientation), ``mode``, ``format``, ``orientation``
(the EXIF tag, 1 when upright),
``bytes``, ``sha256``, ``status`` (``ok`` or why the file is unusable); dedup adds
``group`` and ``keep``, split adds ``split``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from artclf.atomic import write_jsonl
from artclf.errors import ArtclfError

FILENAME = "manifest.jsonl"
OK = "ok"
SPLITS = ("train", "val", "test")  # the values of the split field, in order


def manifest_path(work: Path) -> Path:
    return Path(work) / FILENAME


def read_manifest(work: Path) -> list[dict]:
    """All rows of ``WORK/manifest.jsonl``; a clear error when it is missing or damaged."""
    path = manifest_path(work)
    if not path.is_file():
        raise ArtclfError(f"{path}: not found; run `artclf ingest DATA_DIR --work {work}` first")
    rows = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArtclfError(f"{path}:{n}: not valid JSON ({e.msg}); rerun `artclf ingest`") from None
            rows.append({sys.intern(k): _shared(k, v) for k, v in row.items()})
    return rows


# Values many rows share. Each row's keys and these are one string object for all rows, not one
# per row: about 0.8 KB per row instead of 1.8 (a million-image manifest held by dedup's merge).
_SHARED = frozenset({"artist", "mode", "format", "status", "split"})


def _shared(key: str, value: object) -> object:
    return sys.intern(value) if key in _SHARED and isinstance(value, str) else value


def write_manifest(work: Path, rows: list[dict]) -> Path:
    """Atomically replace ``WORK/manifest.jsonl`` (rows sorted by path, so reruns diff cleanly)."""
    path = manifest_path(work)
    write_jsonl(path, sorted(rows, key=lambda r: r["path"]))
    return path


def usable(rows: list[dict]) -> list[dict]:
    """Rows whose file can be trained on (status ``ok``)."""
    return [r for r in rows if r["status"] == OK]


def manifest_sha256(work: Path) -> str:
    """Hash of the manifest file, recorded by later stages to tie their outputs to it."""
    return hashlib.sha256(manifest_path(work).read_bytes()).hexdigest()


def data_dir(work: Path, override: Path | None = None) -> Path:
    """The data set root the manifest's paths are relative to (ingest records it)."""
    if override is not None:
        return override
    report = Path(work) / "ingest_report.json"
    if not report.is_file():
        raise ArtclfError(f"{report}: not found; run `artclf ingest` first or pass --data-dir")
    return Path(json.loads(report.read_text())["data_dir"])
