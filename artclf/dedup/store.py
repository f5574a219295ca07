"""The feature store: dedup's per-image features in append-only chunks, ``WORK/dedup/features/``.

A chunk is written once and never changed: ``<name>.bin`` (each image's thumbnail and keypoints
as raw bytes) and then ``<name>.npz`` (the chunk's index: sha256 keys, hashes, embeddings, each
image's byte offset and keypoint counts, the model and keypoint settings), each atomically; the
``.npz`` is the commit mark, so a ``.bin`` without one is debris a rerun overwrites. So:

- bytes written grow with N (no cache is rewritten whole), and a killed writer loses at most the
  chunk it was filling (``--chunk-images``); its rerun reads which keys are done and computes the
  rest. Parts write chunks under their own names, so parts never write the same file.
- readers take only what their step needs: :func:`done` the keys, :func:`index` where each image
  lies, :func:`search_arrays` the hashes and embeddings of the candidate search, :func:`read_local`
  the thumbnails and keypoints of chosen images by seek + read (a verification batch's).

A chunk made by another model or other keypoint settings (:data:`geometry.PARAMS`) is ignored,
so its images are computed again; the first valid chunk (by name) holding a key is the one read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artclf.atomic import atomic_open
from artclf.dedup import alignment, geometry, phash

CHUNK = 256  # images per chunk (default --chunk-images): what a killed writer can lose
_THUMB_BYTES = alignment.THUMB * alignment.THUMB * 3
_KP_BYTES = 2 * 2 + 32  # per keypoint: xy float16 + ORB descriptor
_SEQ = re.compile(r"-(\d{6})\.npz$")  # a chunk's number after its writer's prefix


def folder_of(work: Path) -> Path:
    return work / "dedup" / "features"


def _valid(z, model_id: dict | None) -> bool:
    return json.loads(str(z["model"])) == model_id and json.loads(str(z["kp_params"])) == geometry.PARAMS


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def done(folder: Path, model_id: dict | None, wanted: set[str]) -> set[str]:
    """The keys of ``wanted`` some valid chunk holds (one chunk's keys in memory at a time)."""
    have: set[str] = set()
    for path in _chunks(folder):
        with np.load(path) as z:
            if _valid(z, model_id):
                have.update(k for k in z["keys"].tolist() if k in wanted)
    return have


class Writer:
    """Buffers computed features and writes a chunk every ``chunk`` images (and at :meth:`close`)."""

    def __init__(self, folder: Path, prefix: str, model_id: dict | None, chunk: int = CHUNK) -> None:
        self.folder, self.prefix, self.model_id, self.chunk = folder, prefix, model_id, chunk
        taken = [int(m.group(1)) for p in folder.glob(f"{prefix}-*.npz") if (m := _SEQ.search(p.name))]
        self.seq = max(taken, default=-1) + 1
        self.rows: list[tuple] = []
        self.written = 0  # images

    def add(self, keys, h, hf, thumbs, local, e) -> None:
        for i, k in enumerate(keys):
            self.rows.append((k, h[i], hf[i], thumbs[i], local[i], None if e is None else e[i]))
        while len(self.rows) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Write the next chunk: up to ``chunk`` buffered images."""
        if not self.rows:
            return
        name = f"{self.prefix}-{self.seq:06d}"
        keys, h, hf, thumbs, local, e = zip(*self.rows[: self.chunk], strict=True)
        offsets, pos = [], 0
        with atomic_open(self.folder / f"{name}.bin", "wb") as f:
            for t, x in zip(thumbs, local, strict=True):
                offsets.append(pos)
                for a in (t, x.xy, x.desc, x.xy_m, x.desc_m):
                    pos += f.write(np.ascontiguousarray(a).tobytes())
        emb = {} if self.model_id is None else {"emb": np.stack(e).astype(np.float16)}
        with atomic_open(self.folder / f"{name}.npz", "wb") as f:  # last: the chunk now exists
            np.savez(
                f,
                keys=np.array(keys),
                hash=np.stack(h).astype(np.int8),
                flip=np.stack(hf).astype(np.int8),
                offset=np.array(offsets, np.int64),
                kp_count=np.array([(x.n, len(x.desc_m)) for x in local], np.int32).reshape(-1, 2),
                model=np.array(json.dumps(self.model_id)),
                kp_params=np.array(json.dumps(geometry.PARAMS)),
                **emb,
            )
        self.seq, self.written, self.rows = self.seq + 1, self.written + len(keys), self.rows[self.chunk :]

    def close(self) -> None:
        while self.rows:
            self.flush()


@dataclass(frozen=True)
class Index:
    """Where each image of a key list lies: ``names[chunk[i]]`` holds ``keys[i]`` at row ``row[i]``
    of its ``.npz`` and at byte ``offset[i]`` of its ``.bin``, with ``counts[i]`` keypoints (plain,
    mirror). ``missing``: keys no valid chunk holds."""

    folder: Path
    names: list[str]
    chunk: np.ndarray
    row: np.ndarray
    offset: np.ndarray
    counts: np.ndarray
    missing: list[str]


def index(folder: Path, model_id: dict | None, keys: list[str]) -> Index:
    """Locate every key of ``keys`` in the store (memory: O(N) small integers)."""
    at = {k: i for i, k in enumerate(keys)}
    n = len(keys)
    chunk, row = np.full(n, -1, np.int32), np.zeros(n, np.int32)
    offset, counts = np.zeros(n, np.int64), np.zeros((n, 2), np.int32)
    names: list[str] = []
    for path in _chunks(folder):
        with np.load(path) as z:
            if not _valid(z, model_id):
                continue
            ks, off, cnt = z["keys"].tolist(), z["offset"], z["kp_count"]
        pos = np.array([at.get(k, -1) for k in ks], np.int64)
        new = (pos >= 0) & (chunk[np.maximum(pos, 0)] < 0)
        if not new.any():
            continue
        rows = np.flatnonzero(new)
        p = pos[rows]
        chunk[p], row[p], offset[p], counts[p] = len(names), rows, off[rows], cnt[rows]
        names.append(path.stem)
    missing = [keys[i] for i in np.flatnonzero(chunk < 0)]
    return Index(folder, names, chunk, row, offset, counts, missing)


def search_arrays(ix: Index, with_emb: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(hashes, mirrored hashes as ±1 float32, embeddings as float16 or None), a row per key of the
    index, read chunk by chunk."""
    n = len(ix.chunk)
    h = np.zeros((n, phash.BITS), np.float32)
    hf = np.zeros((n, phash.BITS), np.float32)
    e = None
    for c, name in enumerate(ix.names):
        sel = np.flatnonzero(ix.chunk == c)
        with np.load(ix.folder / f"{name}.npz") as z:
            h[sel], hf[sel] = z["hash"][ix.row[sel]], z["flip"][ix.row[sel]]
            if with_emb:
                emb = z["emb"]
                if e is None:
                    e = np.zeros((n, emb.shape[1]), np.float16)
                e[sel] = emb[ix.row[sel]]
    return h, hf, e


def read_local(
    folder: Path, names: list[str], chunk: np.ndarray, offset: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, list[geometry.Local]]:
    """Thumbnails (k, THUMB, THUMB, 3) and keypoints of k images, each read by seek + read from
    ``names[chunk[i]].bin`` at ``offset[i]`` with ``counts[i]`` keypoints."""
    thumbs = np.zeros((len(chunk), alignment.THUMB, alignment.THUMB, 3), np.uint8)
    local: list[geometry.Local | None] = [None] * len(chunk)
    for c in np.unique(chunk):
        with open(folder / f"{names[c]}.bin", "rb") as f:
            for i in np.flatnonzero(chunk == c):
                f.seek(int(offset[i]))
                n, m = (int(x) for x in counts[i])
                buf = f.read(_THUMB_BYTES + (n + m) * _KP_BYTES)
                thumbs[i] = np.frombuffer(buf, np.uint8, _THUMB_BYTES).reshape(thumbs.shape[1:])
                local[i] = _local(buf, _THUMB_BYTES, n, m)
    return thumbs, local  # type: ignore[return-value]


def _local(buf: bytes, at: int, n: int, m: int) -> geometry.Local:
    def take(count: int, dtype: type, width: int) -> np.ndarray:
        nonlocal at
        a = np.frombuffer(buf, dtype, count * width, at).reshape(count, width)
        at += a.nbytes
        return a

    xy, desc = take(n, np.float16, 2), take(n, np.uint8, 32)
    xy_m, desc_m = take(m, np.float16, 2), take(m, np.uint8, 32)
    return geometry.Local(xy, desc, xy_m, desc_m)
