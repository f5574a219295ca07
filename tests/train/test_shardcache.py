"""The node-local copies of S3 train shards (artclf/train/shardcache.py), against the real S3
server: the exact stream reads the same samples from them as from disk; processes of a node
download each shard once between them; a shard that is not the packed one is named, not
downloaded again per sample; a cache disk that fills up (a real tmpfs) falls back to ranged
reads; a download waits out an outage (the server stopped and restarted), and one past the
patience raises instead of falling back."""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from artclf import storage
from artclf.data import read_info, train_index
from artclf.errors import ArtclfError
from artclf.storage import outage
from artclf.train.order import Order
from artclf.train.shardcache import ShardCache
from artclf.train.stream import train_loader
from artclf.transforms import Preprocess
from tests.support.s3server import s3_outage  # noqa: F401  (fixture: a server to stop and restart)

PRE = Preprocess(image_size=24, resize=24)


@pytest.fixture
def s3_shards(s3_env, shards) -> str:
    url = f"s3://{s3_env.bucket}/{uuid.uuid4().hex[:10]}"
    for path in sorted(p for p in shards.iterdir() if p.is_file()):
        storage.upload_file(path, f"{url}/{path.name}")
    return url


def counting_downloads(monkeypatch, log: Path) -> None:
    """Each whole-object read (a download) appends a line to ``log``, from any process."""
    real = storage.open_read

    def open_read(url, *a, **kw):
        with open(log, "a") as f:
            f.write(url + "\n")
        return real(url, *a, **kw)

    monkeypatch.setattr(storage, "open_read", open_read)


def test_the_stream_reads_the_same_samples_from_the_cache_as_from_disk(
    s3_shards, shards, tmp_path, monkeypatch
):
    info, local = read_info(s3_shards), read_info(str(shards))
    index = train_index(info, s3_shards)
    cache = ShardCache(tmp_path / "cache", index.digest(), info["shards"])
    log = tmp_path / "downloads"
    counting_downloads(monkeypatch, log)
    order = Order(len(index), 16, seed=0)
    on_disk = [
        b for e in range(2) for b in train_loader(train_index(local, str(shards)), order, e, 0, PRE, 0)
    ]
    from_cache = [b for e in range(2) for b in train_loader(index, order, e, 0, PRE, 2, cache=cache)]
    assert [b.keys for b in from_cache] == [b.keys for b in on_disk]
    assert all(torch.equal(a.images, b.images) for a, b in zip(from_cache, on_disk, strict=True))
    downloads = [u for u in log.read_text().split() if u.endswith(".tar")]
    assert sorted(downloads) == sorted(index.urls)  # each shard once, over 2 epochs and 2 workers
    assert sorted(p.name for p in cache.dir.iterdir() if p.suffix == ".tar") == sorted(
        u.rsplit("/", 1)[1] for u in index.urls
    )


def _fetch_all(cache: ShardCache, urls: list[str]) -> None:
    for url in urls:
        cache.path(url)


def test_processes_of_a_node_download_each_shard_once_between_them(s3_shards, tmp_path, monkeypatch):
    info = read_info(s3_shards)
    index = train_index(info, s3_shards)
    log = tmp_path / "downloads"
    counting_downloads(monkeypatch, log)
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_fetch_all, args=(ShardCache(tmp_path / "cache", index.digest(), info["shards"]), urls)
        )
        for urls in (index.urls, index.urls[::-1], index.urls, index.urls[::-1])
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(log.read_text().split()) == sorted(index.urls)


def test_a_shard_that_is_not_the_packed_one_is_named_once(s3_env, s3_shards, tmp_path, monkeypatch):
    info = read_info(s3_shards)
    index = train_index(info, s3_shards)
    bad = index.urls[1]
    size = info["shards"][bad.rsplit("/", 1)[1]]["bytes"]
    storage.write_bytes(bad, b"\0" * size)  # same length, other bytes
    log = tmp_path / "downloads"
    counting_downloads(monkeypatch, log)
    cache = ShardCache(tmp_path / "cache", index.digest(), info["shards"])
    for _ in range(3):
        with pytest.raises(
            ArtclfError, match=f"^{bad}: sha256 .* is not _info.json's .*shard changed after it was packed"
        ):
            cache.path(bad)
    assert log.read_text().split() == [bad]
    assert not list(cache.dir.glob("*.tar")) and not list(cache.dir.glob("*.tmp-*"))


def test_a_full_cache_disk_falls_back_to_ranged_reads(s3_shards, tmp_path):
    info = read_info(s3_shards)
    index = train_index(info, s3_shards)
    mount = tmp_path / "small"
    mount.mkdir()
    biggest = max(e["bytes"] for e in info["shards"].values())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={biggest // 2}", "tmpfs", str(mount)], check=True)
    try:
        cache = ShardCache(mount, index.digest(), info["shards"])
        order = Order(len(index), 16, seed=0)
        with pytest.warns(UserWarning, match="No space left on device.*reading it by ranged GETs"):
            got = [b.keys for b in train_loader(index, order, 0, 0, PRE, 0, cache=cache)]
        assert sum(len(k) for k in got) == order.steps * 16  # every sample, by ranged GETs
        assert not list(cache.dir.glob("*.tmp-*"))  # the partial copy was removed
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def outage_shards(s3_outage, shards, monkeypatch) -> str:  # noqa: F811  (the fixture imported above)
    """The ``shards`` set on a server of the test's own; boto3 pointed at it, botocore quick to
    give up, a short backoff; the patience restored afterwards."""
    for name, value in s3_outage.server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)
    monkeypatch.setattr(outage, "BACKOFF_CAP_S", 0.5)
    monkeypatch.setattr(outage, "_patience", outage.DEFAULT_PATIENCE_S)
    storage.set_endpoint(None)
    url = f"s3://{s3_outage.server.bucket}/shards"
    for path in sorted(p for p in shards.iterdir() if p.is_file()):
        storage.upload_file(path, f"{url}/{path.name}")
    yield url
    storage.set_endpoint(None)


def test_a_download_waits_out_an_outage_and_past_the_patience_raises(s3_outage, outage_shards, tmp_path):  # noqa: F811
    info = read_info(outage_shards)
    index = train_index(info, outage_shards)
    cache = ShardCache(tmp_path / "cache", index.digest(), info["shards"])
    first, second = index.urls[:2]
    with s3_outage.down_for(2.0):
        local = cache.path(first)  # the download starts while the store is down
    want = info["shards"][first.rsplit("/", 1)[1]]["sha256"]
    assert local != first and hashlib.sha256(Path(local).read_bytes()).hexdigest() == want
    storage.set_patience(1.0)
    s3_outage.stop()
    with pytest.raises(storage.StorageUnavailable, match=f"^{second}: cannot reach the S3 endpoint"):
        cache.path(second)  # not the ranged GETs of a full disk: they would wait on the same store
    assert not list(cache.dir.glob("*.tmp-*"))
