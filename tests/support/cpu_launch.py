"""`accelerate launch` of N real CPU processes (gloo), with a hard timeout that kills the whole
process tree: a test that hangs fails with the output so far and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import procs
from tests.support.procs import _ppid, output, processes_with


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
    return procs.spawn(cmd, env={**os.environ, **CPU_ENV, **env})


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """(exit code, output); past ``timeout`` s kill the tree and fail with what it printed. The
    tree is killed on any way out, so no rank outlives its test."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"hung: still running after {timeout:.0f} s; output:\n{output(proc)[-6000:]}"
        ) from None
    finally:
        procs.stop_tree(proc)  # DataLoader workers or ranks left behind by a launcher that died
    out = output(proc)
    proc.log_path.unlink(missing_ok=True)  # type: ignore[attr-defined]
    return proc.returncode, out


def launch(nproc: int, *args: str, timeout: float = 300, launch_args: tuple[str, ...] = (), **env: str):
    """Run to the end (or fail at ``timeout``); (exit code, output)."""
    return finish(start(accelerate_cmd(nproc, *args, launch_args=launch_args), **env), timeout)


def accelerate_cpu(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``launch`` as a CompletedProcess; stdout and stderr both hold the merged output."""
    cmd = accelerate_cmd(nproc, *args)
    code, out = finish(start(cmd), timeout)
    return subprocess.CompletedProcess(cmd, code, out, out)


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
