"""A real ``artclf serve`` for the tests: started on a free loopback port in a session of its
own, killed with its whole tree afterwards; multipart uploads and posts to it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support import procs

STARTUP_S = 120.0  # import, model load and bind; a few seconds here
PORT_TRIES = 3


class _PortTaken(Exception):
    pass


def serve_cmd(model: Path, port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "artclf", "serve", "--model", str(model), "--port", str(port), *flags]


def _wait_until_serving(proc: subprocess.Popen, url: str) -> dict:
    """/health of ``proc`` once uvicorn says it listens on ``url`` (so that a process that took
    the port meanwhile is never mistaken for ours); _PortTaken when the bind failed."""
    ours = f"Uvicorn running on {url}"
    deadline = time.monotonic() + STARTUP_S
    while ours not in procs.output(proc):
        if proc.poll() is not None:
            log = procs.output(proc)
            if "address already in use" in log:
                raise _PortTaken(log)
            raise AssertionError(f"serve ended (exit {proc.returncode}) before serving:\n{log[-4000:]}")
        assert time.monotonic() < deadline, f"serve did not listen on {url}:\n{procs.output(proc)[-4000:]}"
        time.sleep(0.2)
    with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def serving(cmd_for_port: Callable[[int], list[str]], log_dir: Path, ports: Iterator[int] | None = None):
    """Start ``artclf serve`` on a free port in a session of its own; yield (process, url,
    /health); the whole process tree is killed on the way out, whatever happened. A port that
    was free when probed but taken before the server bound it (another process may bind it on
    purpose) is retried with a new one, ``PORT_TRIES`` times in all."""
    ports = ports if ports is not None else iter(procs.free_port, None)
    for attempt in range(PORT_TRIES):
        port = next(ports)
        url = f"http://127.0.0.1:{port}"
        # the log is a file, not a pipe: the access log must never block the server
        proc = procs.spawn(cmd_for_port(port), log=log_dir / f"serve-{attempt}.log")
        try:
            try:
                health = _wait_until_serving(proc, url)
            except _PortTaken:
                continue
            yield proc, url, health
            return
        finally:
            procs.stop_tree(proc)
    raise AssertionError(f"artclf serve found its port taken {PORT_TRIES} times: see {log_dir}")


def multipart(data: bytes, filename: str, ctype: str, field: str = "file") -> tuple[bytes, str]:
    boundary = "artclf-test-boundary-7c1f"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, ctype: str, path: str = "/predict") -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
