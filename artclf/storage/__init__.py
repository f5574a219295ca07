"""Where shards live: one small API over a local folder or an ``s3://bucket/prefix``.

Writes are atomic: locally a temp file is renamed (:mod:`artclf.atomic`); an S3 PUT, single or
multipart, is visible only once complete. S3 goes through boto3, with credentials from its own
chain (environment, ``~/.aws``, instance role), never taken as arguments nor printed. The endpoint
is ``AWS_ENDPOINT_URL`` (boto3 reads it) or :func:`set_endpoint` (the CLI's ``--endpoint-url``).

A permanent answer (access denied, no such bucket or key, no credentials) raises
:class:`PermanentStorageError` at once. A transient failure (refused or reset connection,
timeout, DNS, 5xx, throttling, a body broken mid-read) that outlasts botocore's own retries is
waited out, each request up to the patience (:func:`set_patience`, ``--storage-patience``), then
raises :class:`StorageUnavailable`; :mod:`artclf.storage.outage` keeps the account
(:func:`waited_s`, one line when an outage starts and one when it ends).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as URLLib3Error

from artclf.atomic import atomic_open
from artclf.errors import ArtclfError
from artclf.storage.outage import DEFAULT_PATIENCE_S as DEFAULT_PATIENCE_S
from artclf.storage.outage import StorageUnavailable as StorageUnavailable
from artclf.storage.outage import Wait, cause, is_transient, s3_answer
from artclf.storage.outage import check_outlasts as check_outlasts
from artclf.storage.outage import set_patience as set_patience
from artclf.storage.outage import waited_s as waited_s

MiB = 1 << 20
S3_MAX_ATTEMPTS = 5  # per request, botocore "standard" mode: throttling, 5xx, connection errors
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60  # per socket read, not per object
# 16 MiB parts: few requests per shard, and S3's 10,000-part limit still allows 160 GB objects.
TRANSFER = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)

_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Environment that changes which client boto3 builds: endpoint, identity, region.
_CLIENT_ENV = _SECRET_ENV + ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION")
_CLIENT_ENV += ("AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")

_endpoint: str | None = None
_clients: dict[tuple, tuple[Any, Any]] = {}  # key -> (boto3 Credentials or None, client)


def is_s3(url: str | os.PathLike) -> bool:
    """True for ``s3://bucket/key`` URLs, False for local paths."""
    return str(url).startswith("s3://")


def join(url: str | os.PathLike, name: str) -> str:
    """``name`` inside the folder or S3 prefix ``url``."""
    url = str(url)
    return f"{url.rstrip('/')}/{name}" if is_s3(url) else os.path.join(url, name)


def set_endpoint(url: str | None) -> None:
    """Use this S3 endpoint (e.g. ``http://minio:9000``) instead of ``AWS_ENDPOINT_URL``; None resets."""
    global _endpoint
    _endpoint = url or None
    _clients.clear()


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ArtclfError(f"{url}: no bucket in the URL (expected s3://bucket/prefix/name)")
    return bucket, key


def _client() -> Any:
    # By pid: a boto3 client must not cross a fork (DataLoader workers build their own). With the
    # environment, hashed so the cache holds no secret: changed credentials get a new client.
    env = "\0".join(os.environ.get(name, "") for name in _CLIENT_ENV)
    key = (os.getpid(), _endpoint, hashlib.sha256(env.encode()).hexdigest())
    if key not in _clients:  # no lock: threads racing here build equivalent clients, one survives
        custom = _endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # S3-compatible stores: virtual-host buckets (bucket.minio:9000) rarely resolve, and
        # botocore >= 1.36 adds CRC checksum trailers that several of them reject.
        compat = {"s3": {"addressing_style": "path"}, "request_checksum_calculation": "when_required"}
        retries = {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}
        config = Config(retries=retries, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)
        config = config.merge(Config(**compat)) if custom else config
        session = boto3.session.Session()  # one per client: boto3's default one is not thread-safe
        client = session.client("s3", endpoint_url=_endpoint, config=config)
        # The credentials are kept only for _redact; the session has them cached already.
        _clients[key] = (session.get_credentials(), client)
    return _clients[key][1]


def _redact(text: str) -> str:
    """Mask every credential this process knows of, should a message ever echo one."""
    secrets = [os.environ.get(name, "") for name in _SECRET_ENV]
    for creds, _ in list(_clients.values()):
        secrets += list(creds.get_frozen_credentials()) if creds is not None else []
    for secret in secrets:
        text = text.replace(secret, "***") if secret and len(secret) >= 4 else text
    return text


class PermanentStorageError(ArtclfError):
    """An answer that retrying will not change: access denied, no such bucket, key or file, no
    credentials. Readers stop at once on it; any other storage error may be a passing glitch."""

    status, code = 0, ""  # the answer's HTTP status (403, 404) and S3 error code; 0 and "" for none


# Codes S3 (and MinIO, Ceph, SeaweedFS) answer for bad or expired credentials, whatever the status.
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken")


def _error(url: str, e: BaseException) -> ArtclfError:
    """A boto3/botocore exception as one line that names the URL, the cause and the fix;
    a :class:`PermanentStorageError` when asking again cannot help."""
    status, code = s3_answer(e)
    denied = status in (401, 403) or code in _DENIED
    # NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, …
    no_credentials = isinstance(e, BotoCoreError) and "Credential" in type(e).__name__
    if denied:
        answer = f"{status} {code}" if status and code != str(status) else code
        msg = f"access denied ({answer}): check AWS credentials / AWS_PROFILE and the bucket policy"
    elif code == "NoSuchBucket":
        msg = "bucket does not exist (NoSuchBucket)"
    elif status == 404:
        msg = f"not found ({code})"
    elif status == 412:
        msg = f"object changed while it was being read ({code})"
    elif code:
        msg = f"S3 error {code} ({e})"
    elif no_credentials:
        msg = f"no usable AWS credentials ({type(e).__name__}): set AWS_ACCESS_KEY_ID and "
        msg += "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run where an instance role is attached"
    else:
        msg = f"S3 request failed ({type(e).__name__}: {e})"
    if not (denied or no_credentials or code == "NoSuchBucket" or status == 404):
        return ArtclfError(f"{url}: {_redact(msg)}")
    err = PermanentStorageError(f"{url}: {_redact(msg)}")
    err.status, err.code = status, code
    return err


def _patiently(url: str, request: Callable[[], Any], missing_ok: bool = False, reading: bool = False) -> Any:
    """``request()`` (S3 calls, botocore retrying each), transient failures waited out up to the
    patience, others made readable; None for a 404 if ``missing_ok``. ``reading``: a body read."""
    wait, errors = Wait(url), (ClientError, BotoCoreError, S3UploadFailedError)
    errors += (URLLib3Error, OSError) if reading else ()
    try:
        while True:
            started = time.monotonic()
            try:
                return request()
            except errors as e:
                if missing_ok and s3_answer(e)[0] == 404:
                    return None
                if not is_transient(e, reading):
                    raise _error(url, e) from None
                wait.failed(_redact(cause(e)), started)
    finally:
        wait.done()


def _request(url: str, method: str, **kwargs: Any) -> Any:
    bucket, key = _split(url)
    return getattr(_client(), method)(Bucket=bucket, Key=key, **kwargs)


def _call(url: str, method: str, missing_ok: bool = False, **kwargs: Any) -> Any:
    """One S3 call on ``url``'s object, transient failures waited out, errors made readable."""
    return _patiently(url, lambda: _request(url, method, **kwargs), missing_ok)


def exists(url: str | os.PathLike) -> bool:
    """Whether the file or S3 object ``url`` exists."""
    return size(url) is not None


def size(url: str | os.PathLike) -> int | None:
    """Size in bytes of the file or object ``url``; None when it does not exist."""
    url = str(url)
    if is_s3(url):
        head = _call(url, "head_object", missing_ok=True)
        return None if head is None else int(head["ContentLength"])
    return os.path.getsize(url) if os.path.isfile(url) else None


def list_names(url: str | os.PathLike, suffix: str = "") -> list[str]:
    """Sorted names of the files directly under a folder or S3 prefix ending in ``suffix`` ([] if none)."""
    url = str(url)
    if not is_s3(url):
        files = [e.name for e in os.scandir(url) if e.is_file()] if os.path.isdir(url) else []
        return sorted(n for n in files if n.endswith(suffix))
    bucket, prefix = _split(url)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def listing() -> list[str]:
        pages = (
            _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    keys = _patiently(url, listing)
    return sorted(k[len(prefix) :] for k in keys if len(k) > len(prefix) and k.endswith(suffix))


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole content of a (small) file or object, e.g. ``_info.json``."""
    with open_read(url) as f:
        return f.read()


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically: readers see the old content or the new, never a part."""
    url = str(url)
    if is_s3(url):
        _call(url, "put_object", Body=data)
    else:
        with atomic_open(url, "wb") as f:
            f.write(data)


def upload_file(local_path: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy a local file to ``url`` atomically; on S3 multipart (parallel parts) above 16 MiB."""
    url, local_path = str(url), Path(local_path)
    if not local_path.is_file():
        raise ArtclfError(f"{local_path}: no such file to upload to {url}")
    if is_s3(url):
        _call(url, "upload_file", Filename=str(local_path), Config=TRANSFER)
    elif not (os.path.exists(url) and os.path.samefile(local_path, url)):
        with open(local_path, "rb") as src, atomic_open(url, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 * MiB)


def remove(url: str | os.PathLike) -> None:
    """Delete a file or object; one that does not exist is not an error."""
    url = str(url)
    if is_s3(url):
        _call(url, "delete_object")
    else:
        Path(url).unlink(missing_ok=True)


def read_range(url: str | os.PathLike, offset: int, size: int) -> bytes:
    """``size`` bytes of a file or object from ``offset``: one ``pread`` on disk, one ranged GET
    on S3 (a body broken mid-read is asked for again). Fewer bytes than asked for (the object is
    shorter) raise :class:`ArtclfError`; a missing file or object, or a refusal,
    :class:`PermanentStorageError`."""
    url = str(url)
    if size <= 0:
        return b""
    if not is_s3(url):
        with _open_local(url) as f:
            data = os.pread(f.fileno(), size, offset)
    else:

        def get() -> bytes:
            body = _request(url, "get_object", Range=f"bytes={offset}-{offset + size - 1}")["Body"]
            with contextlib.closing(body):
                return body.read()

        data = _patiently(url, get, reading=True)
    if len(data) != size:
        raise ArtclfError(
            f"{url}: {len(data)} bytes at offset {offset}, expected {size} (the file is shorter)"
        )
    return data


def open_read(url: str | os.PathLike) -> BinaryIO:
    """A buffered, forward-only stream of a file or object; on S3 streamed, never held whole.

    A connection that breaks mid-read is reopened at the offset (HTTP ``Range``), an outage
    waited out as any request's; ``If-Match`` on the ETag makes an object replaced meanwhile
    an error, not a splice.
    """
    url = str(url)
    if not is_s3(url):
        return _open_local(url)
    return io.BufferedReader(_S3Reader(url), buffer_size=MiB)  # type: ignore[return-value]


def _open_local(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise PermanentStorageError(f"{path}: not found") from None
    except (PermissionError, IsADirectoryError) as e:
        raise PermanentStorageError(f"{path}: {e.strerror.lower()}") from None


class _S3Reader(io.RawIOBase):
    """One object, read once from start to end, reopened at its offset when the stream breaks."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self._pos, self._reopened = url, 0, 0
        head = _call(url, "get_object")  # a missing object or bad credentials fail here, at once
        self._size, self._etag, self._body = int(head["ContentLength"]), head["ETag"], head["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._pos >= self._size:
            return 0
        data = _patiently(self.url, lambda: self._next(len(buf)), reading=True)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _next(self, n: int) -> bytes:
        try:
            if self._body is None:
                reopened = _request(self.url, "get_object", Range=f"bytes={self._pos}-", IfMatch=self._etag)
                self._body = reopened["Body"]
            data = self._body.read(min(n, self._size - self._pos))
            if not data:
                raise OSError("stream ended early")
            return data
        except Exception as e:
            if self._body is not None and is_transient(e, reading=True):
                self._reopened += 1
                where, cause = f"byte {self._pos} of {self._size}", _redact(f"{type(e).__name__}: {e}")
                msg = f"{self.url}: read broke at {where} ({cause}); reopening, retry {self._reopened}"
                warnings.warn(msg, stacklevel=5)
            self._drop_body()
            raise

    def _drop_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close too
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    if not mode.startswith("r"):
        raise ValueError(f"{url}: cannot write through webdataset; write locally, then storage.upload_file")
    return open_read(url)


def register_webdataset_s3() -> None:
    """Make ``webdataset`` open ``s3://`` URLs with :func:`open_read` (boto3, streamed, retried).

    webdataset 1.0 has no ``s3`` handler; it looks schemes up in ``webdataset.gopen.gopen_schemes``
    at each open, so one call in the main process covers forked DataLoader workers (Linux's
    default). Under "spawn" or "forkserver", call it in ``worker_init_fn`` too. Idempotent.
    """
    from webdataset.gopen import gopen_schemes  # `webdataset.gopen` is also a function's name

    gopen_schemes["s3"] = _gopen_s3
