"""Waiting out a store's transient failures, for :mod:`artclf.storage`: which S3 failures are
transient (no answer, 5xx, throttling, a body broken mid-read), each request retried with capped
exponential backoff and jitter up to the patience, and one account of an outage for a process
and the DataLoader workers it forks.

The account lives in shared memory made at import, so workers forked later add to their
parent's: :func:`waited_s` counts the wall-clock seconds during which at least one request was
waiting (from the start of the request that failed; waits that overlap count once), and an
outage is said in one line when it starts and one when it ends, by rank 0 only (``RANK`` unset
or 0), however many workers wait. Under "spawn" or "forkserver" each worker keeps its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterator

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as URLLib3Error

from artclf.errors import ArtclfError

DEFAULT_PATIENCE_S = 900.0  # how long one request waits out transient failures (--storage-patience)
RETRY_BACKOFF_S = 0.5  # the first wait after a failure; doubling (times 0.5 to 1, at random) up to
BACKOFF_CAP_S = 30.0  # this: a store that is back is noticed within it

# Worth waiting out (botocore's ConnectionError covers DNS, refused, connect timeouts); a
# ClientError is an answer, transient only for 5xx and throttling. Any OSError in a body read.
_TRANSIENT = (BotoConnectionError, HTTPClientError, IncompleteReadError, URLLib3Error)
_BUSY = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable")
_BUSY += ("InternalError", "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException")

_patience = DEFAULT_PATIENCE_S
# requests waiting now, since when (time.monotonic(): one clock for the machine), seconds of the
# outages that ended, when the last one ended, whether this one was said; the URL it was said for
_outage = multiprocessing.Array("d", 5)
_outage_url = multiprocessing.Array("c", 1024, lock=False)


class StorageUnavailable(ArtclfError):
    """Still failing transiently (unreachable, 5xx, throttling) after the patience: the store
    is down, the data not known to be broken. Readers stop on it; it is not a bad shard. A
    later attempt may find the store back: not permanent."""

    permanent = False


def s3_answer(e: BaseException) -> tuple[int, str]:
    """(HTTP status, error code) of an S3 answer; (0, "") when there was none. The status
    classifies best: a HEAD answer carries no error code beyond it."""
    if isinstance(e, S3UploadFailedError) and isinstance(e.__context__, ClientError):
        e = e.__context__  # boto3 raises it inside `except ClientError` without `from`
    if not isinstance(e, ClientError):
        return 0, ""
    meta, err = e.response.get("ResponseMetadata", {}), e.response.get("Error", {})
    return meta.get("HTTPStatusCode", 0), str(err.get("Code", "?"))


def is_transient(e: BaseException, reading: bool = False) -> bool:
    """No answer, 5xx or throttling: worth waiting out. ``reading``: a body read, where any
    OSError is the connection's."""
    status, code = s3_answer(e)
    if status:
        return status >= 500 or status == 429 or code in _BUSY
    return isinstance(e, _TRANSIENT) or (reading and isinstance(e, OSError))


def cause(e: BaseException) -> str:
    """A transient failure in words, for the waiting line and :class:`StorageUnavailable`."""
    status, code = s3_answer(e)
    if status:
        return f"S3 answered {status} {code}"
    if isinstance(e, BotoConnectionError):
        return f"cannot reach the S3 endpoint ({e})"
    return f"the connection broke ({type(e).__name__}: {e})"


def set_patience(seconds: float) -> None:
    """Seconds each request waits out transient failures before :class:`StorageUnavailable`
    (0: none beyond botocore's own retries). Forked DataLoader workers inherit it."""
    global _patience
    if seconds < 0:
        raise ValueError(f"the storage patience must be >= 0 seconds, got {seconds}")
    _patience = float(seconds)


def check_outlasts(patience: float, margin: float = 0.0, **timeouts: float) -> None:
    """Raise ValueError unless each of ``timeouts`` (flag name with ``_`` for ``-``: seconds, 0
    for none) exceeds ``patience`` (0: no waiting) by more than ``margin`` seconds: whatever
    waits on a read that waits out an outage must wait longer than it."""
    for name, value in timeouts.items():
        if value and patience and value <= patience + margin:
            by = f" by more than {margin:g} s" if margin else ""
            raise ValueError(
                f"--{name.replace('_', '-')} {value:g} s must exceed --storage-patience {patience:g} s{by}: "
                "what waits on a read that waits out a storage outage would be killed before its "
                "storage came back"
            )


def waited_s() -> float:
    """Wall-clock seconds during which at least one request of this process or of its forked
    DataLoader workers was waiting out a transient failure."""
    with _locked():
        waiting, since, total = _outage[0], _outage[1], _outage[2]
    return total + (max(0.0, time.monotonic() - since) if waiting else 0.0)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Bounded: a worker killed inside must not hang its siblings (the count would be off instead).
    got = _outage.get_lock().acquire(timeout=5.0)
    try:
        yield
    finally:
        if got:
            _outage.get_lock().release()


def _say(line: str) -> None:
    if os.environ.get("RANK", "0") in ("", "0"):  # one line per job, not per rank
        print(f"artclf: {line}", file=sys.stderr, flush=True)


def duration(s: float) -> str:
    """``21 s``, ``14m 40s``."""
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)}m {int(s % 60)}s"


class Wait:
    """One request's wait through transient failures: ``failed`` after each (it sleeps, or
    raises once the patience is spent), ``done`` when the request ends, however it ends."""

    def __init__(self, url: str) -> None:
        self.url, self.since, self.failures = url, 0.0, 0

    def failed(self, cause: str, started: float) -> None:
        """The attempt begun at ``started`` failed transiently (``cause``, no secret in it).
        The second failure in a row says the outage: a first may be a cut connection, reopened
        at once."""
        now = time.monotonic()
        if not self.failures:
            self.since = started
            with _locked():
                start = max(started, _outage[3])  # not again what the last outage counted
                _outage[1] = min(_outage[1], start) if _outage[0] else start
                _outage[0] += 1
        self.failures += 1
        waited = now - self.since
        if waited >= _patience:
            self.done(back=False)
            raise StorageUnavailable(
                f"{self.url}: {cause}; still failing after {duration(waited)}, past the storage patience "
                f"({duration(_patience)}, --storage-patience); check AWS_ENDPOINT_URL / --endpoint-url, "
                "the network and the store"
            )
        if self.failures == 2:
            with _locked():
                first, _outage[4] = not _outage[4], 1
                if first:
                    _outage_url.value = self.url.encode()[:1023]
            if first:
                _say(
                    f"waiting for {self.url}: {cause}; retrying for up to {duration(_patience - waited)} more"
                )
        delay = min(BACKOFF_CAP_S, RETRY_BACKOFF_S * 2 ** (self.failures - 1)) * random.uniform(0.5, 1)
        time.sleep(max(0.0, min(delay, self.since + _patience - now)))

    def done(self, back: bool = True) -> None:
        """The request got an answer (``back``) or gave up; the last of an outage's waits to end
        closes the account, and says the store is back if the outage was said."""
        if not self.failures:
            return
        self.failures = 0
        with _locked():
            _outage[0] -= 1
            if _outage[0] > 0:
                return
            now, said = time.monotonic(), _outage[4]
            took, _outage[3], _outage[4] = now - _outage[1], now, 0
            _outage[2] += took
            url = _outage_url.value.decode(errors="replace")
        if said and back:
            _say(f"{url} reachable again after {duration(took)}")
