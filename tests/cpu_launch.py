"""`accelerate launch` of N real CPU processes (gloo), with a hard timeout that kills the whole
process tree: a test that hangs fails with the output so far and leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO


def accelerate_cmd(nproc: int, *args: str, launch_args: tuple[str, ...] = ()) -> list[str]:
    """`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` (really N processes);
    one process: `--cpu` (no torchrun)."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    return [
        accelerate,
        "launch",
        "--multi_gpu" if nproc > 1 else "--cpu",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        *launch_args,
        *args,
    ]


CPU_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def start(cmd: list[str], **env: str) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, from the repository root; output (merged) goes to
    a file, not a pipe nobody reads while the test waits (a full pipe would block the ranks)."""
    log = tempfile.NamedTemporaryFile("w+", prefix="launch-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **CPU_ENV, **env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """(exit code, output); past ``timeout`` s kill the tree and fail with what it printed."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        raise AssertionError(
            f"hung: still running after {timeout:.0f} s; output:\n{output(proc)[-6000:]}"
        ) from None
    out = output(proc)
    proc.log_path.unlink(missing_ok=True)  # type: ignore[attr-defined]
    return proc.returncode, out


def launch(nproc: int, *args: str, timeout: float = 300, launch_args: tuple[str, ...] = (), **env: str):
    """Run to the end (or fail at ``timeout``); (exit code, output)."""
    return finish(start(accelerate_cmd(nproc, *args, launch_args=launch_args), **env), timeout)


def processes_with(needle: str) -> list[int]:
    """Pids whose command line contains ``needle`` (e.g. a run folder)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline and int(entry) != os.getpid():
                out.append(int(entry))
    return out


def rank_pids(needle: str) -> dict[int, int]:
    """rank -> pid of the trainer processes of a run: RANK in their environment (set by
    torchrun) but not in their parent's (their DataLoader workers inherit it from them)."""
    ranks: dict[int, int] = {}
    for pid in processes_with(needle):
        try:
            rank, parent_rank = _rank(pid), _rank(_ppid(pid))
        except (OSError, ValueError, IndexError):
            continue
        if rank is not None and parent_rank is None:
            ranks[rank] = pid
    return ranks


def _rank(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ended (exit {proc.returncode}) before {what}:\n{output(proc)[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.2)


def kill_tree(pid: int) -> None:
    """SIGKILL a process group and every process under ``pid`` (trainers lead groups of their own)."""
    for p in [pid, *descendants(pid)]:
        for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(p)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(_ppid(int(entry)), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
