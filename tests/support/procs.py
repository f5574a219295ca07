"""Processes and ports of the tests: start in a session of their own, end with the whole tree,
wait for events instead of sleeping. docs/testing.md says when to use which.

- ``spawn`` starts a command in its own session (process group), output to a file, never a pipe
  nobody reads; ``running`` does the same as a context manager that kills the tree on the way
  out, whatever happened inside (an assertion, a timeout, a KeyboardInterrupt).
- ``kill_tree`` SIGKILLs a process group and every descendant (trainers lead groups of their own).
- ``wait_for`` polls a condition with a deadline and fails at once when the process it depends
  on has ended.
- ``free_port`` hands out a port below the kernel's ephemeral range, so no outgoing connection
  can be given it between the probe and the bind; callers that bind later still retry (another
  process may bind it on purpose), see ``tests/serve/test_serve.py: server``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Set by tests/conftest.py for the whole session: every process the suite starts inherits it,
# so the session's end can find (and report) any that outlived it, however it was started.
SESSION_MARK = "ARTCLF_TEST_SESSION"


def spawn(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, log: Path | None = None):
    """Start ``cmd`` in a session of its own, stdin closed, stdout+stderr to ``log`` (a temporary
    file when None). ``proc.log_path`` is where the output goes. ``env`` replaces the
    environment, but the session mark is always passed on."""
    env = dict(os.environ if env is None else env)
    if SESSION_MARK in os.environ:
        env[SESSION_MARK] = os.environ[SESSION_MARK]
    if log is None:
        f = tempfile.NamedTemporaryFile("w+", prefix="proc-", suffix=".log", delete=False)  # noqa: SIM115
        log = Path(f.name)
        f.close()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd or REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


@contextlib.contextmanager
def running(cmd: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """``spawn`` for the body of a ``with``; the process tree is killed on the way out."""
    proc = spawn(cmd, **kwargs)
    try:
        yield proc
    finally:
        stop_tree(proc)


def run_together(commands: list[dict], timeout: float) -> list[tuple[int | None, str]]:
    """Start every ``spawn(**kwargs)`` of ``commands`` (e.g. one per simulated node), wait for all;
    (exit code, output) of each, None for one still running at ``timeout``. Every tree is ended."""
    started = []
    try:
        for kwargs in commands:
            started.append(spawn(**kwargs))
        deadline = time.monotonic() + timeout
        for p in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        return [(p.poll(), output(p)) for p in started]
    finally:
        for p in started:
            stop_tree(p)


def stop_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc``, its process group and its descendants; reap it."""
    kill_tree(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def kill_tree(pid: int) -> None:
    """SIGKILL a process group and every process under ``pid`` (descendants found first: once
    the parent is dead its children are re-parented and can no longer be found from it)."""
    for p in [*descendants(pid), pid]:
        for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(p)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _pids() -> list[int]:
    """Every live process but this one."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in _pids():
        try:
            children.setdefault(_ppid(p), []).append(p)
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def marked(mark: str) -> dict[int, str]:
    """pid -> command line of the live processes whose environment holds ``SESSION_MARK=mark``
    (zombies have no environment left and are not listed)."""
    needle = f"{SESSION_MARK}={mark}".encode()
    out = {}
    for pid in _pids():
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                out[pid] = _cmdline(pid)
        except OSError:
            continue
    return out


def processes_with(needle: str) -> list[int]:
    """Pids whose command line contains ``needle`` (e.g. a run folder)."""
    out = []
    for pid in _pids():
        try:
            if needle in _cmdline(pid):
                out.append(pid)
        except OSError:
            continue
    return out


def wait_for(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    every: float = 0.2,
) -> None:
    """Poll ``condition`` every ``every`` s; fail when ``proc`` ends first or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            tail = output(proc)[-4000:] if hasattr(proc, "log_path") else ""
            raise AssertionError(f"ended (exit {proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(every)


def _ephemeral() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that are free now, below the ephemeral range (10000 up to it), so the
    kernel never hands them to an outgoing connection. All are probed while held together."""
    lo = 10_000
    hi = _ephemeral()[0] - 1
    socks: list[socket.socket] = []
    try:
        for port in random.sample(range(lo, hi), k=min(hi - lo, 50 * n)):
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [s.getsockname()[1] for s in socks]
        raise AssertionError(f"no {n} free ports between {lo} and {hi}")
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


PORT_TAKEN = ("Address already in use", "EADDRINUSE", "address already in use")


def on_free_port(run: Callable[[int], list[tuple[object, str]]], attempts: int = 3):
    """``run(port)`` on a free port; again on another one when the output says the port was taken
    meanwhile (``run`` returns (exit code, output) pairs and has ended its processes)."""
    for attempt in range(attempts):
        results = run(free_port())
        if attempt == attempts - 1 or not any(
            code != 0 and any(t in out for t in PORT_TAKEN) for code, out in results
        ):
            return results
    raise AssertionError("unreachable")
