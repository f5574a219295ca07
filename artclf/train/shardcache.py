"""A node-local cache of whole train shards, for shard sets on S3.

The exact order reads samples in a random order over the whole train split, one ranged read
each. On disk that is a ``pread``; on S3 it would be one GET per sample, and a GET costs the
worker far more CPU than a read of the same bytes from a stream (``bench/loader.py``: 0.35×
the throughput of streaming whole shards). So on S3 every shard is fetched whole, once, into
``--cache-dir`` on the node, and samples are read from there:

- ``ROOT/<16 hex of the index digest and the shards' sha256>/<shard name>``: a folder per data
  set, so another shard set (or the same one packed again) never reads a stale copy;
- the first process of the node (rank or DataLoader worker) that needs a shard takes an
  exclusive ``flock`` on ``<name>.lock``, streams the object into ``<name>.tmp-<pid>``, checks
  its size and sha256 against ``_info.json`` and renames it into place; the others wait on
  the lock and then find the file. Each shard is therefore downloaded once per node, not
  once per epoch: the cache stays for the rest of the run, its restarts and requeues (a
  resumed run reads nothing again), and is left on disk for the next run of the same data;
- the cache holds the whole train split (its size, from ``_info.json``, is printed at
  start). A shard that cannot be written there (a full or read-only disk) is read by ranged
  GETs instead, with one warning per process. A download waits out an outage of the store
  like any read (:mod:`artclf.storage`); one past the patience raises, it is no reason to
  fall back to ranged GETs (they would wait on the same store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import warnings
from pathlib import Path

from artclf import storage
from artclf.errors import ArtclfError


class ShardCache:
    """Local copies of the shards at ``urls`` under ``root/<key>``; ``expected``: shard name ->
    ``{"bytes", "sha256"}`` (``_info.json``'s ``shards``), checked after each download."""

    def __init__(self, root: str | os.PathLike, key: str, expected: dict[str, dict] | None = None) -> None:
        self.expected = expected or {}
        shas = sorted((name, e.get("sha256")) for name, e in self.expected.items())
        self.dir = Path(root) / hashlib.sha256(json.dumps([key, shas]).encode()).hexdigest()[:16]
        self._ready: dict[str, str] = {}  # url -> local path, in this process
        self._bad: dict[str, str] = {}  # url -> why its download is not the packed shard
        self._warned = False

    def path(self, url: str) -> str:
        """Where to read ``url`` from: its local copy (downloaded now if this node has none), or
        the URL itself when the copy cannot be made."""
        if url in self._ready:
            return self._ready[url]
        if url in self._bad:  # not downloaded again for each of its samples
            raise ArtclfError(self._bad[url])
        name = url.rsplit("/", 1)[-1]
        local = self.dir / name
        try:
            if not self._complete(local, name):
                self.dir.mkdir(parents=True, exist_ok=True)
                with open(self.dir / f"{name}.lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                    if not self._complete(local, name):
                        self._download(url, local, name)
        except OSError as e:  # a full or read-only cache disk: read from the store instead
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{self.dir}: cannot cache {url} ({e}); reading it by ranged GETs", stacklevel=2
                )
            return url
        self._ready[url] = str(local)
        return str(local)

    def _complete(self, local: Path, name: str) -> bool:
        want = self.expected.get(name, {}).get("bytes")
        return local.is_file() and (want is None or local.stat().st_size == want)

    def _download(self, url: str, local: Path, name: str) -> None:
        tmp = local.with_name(f"{name}.tmp-{os.getpid()}")
        sha = hashlib.sha256()
        try:
            with storage.open_read(url) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    sha.update(chunk)
                    dst.write(chunk)
            want = self.expected.get(name, {})
            if "sha256" in want and sha.hexdigest() != want["sha256"]:
                self._bad[url] = (
                    f"{url}: sha256 {sha.hexdigest()[:12]}… is not _info.json's {want['sha256'][:12]}… (the "
                    "shard changed after it was packed); check the set with `artclf shard --verify`"
                )
                raise ArtclfError(self._bad[url])
            os.replace(tmp, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def default_root() -> str:
    """``$ARTCLF_CACHE``, else ``$TMPDIR/artclf-shards`` (node-local under SLURM and in a pod)."""
    import tempfile

    return os.environ.get("ARTCLF_CACHE") or str(Path(tempfile.gettempdir()) / "artclf-shards")
