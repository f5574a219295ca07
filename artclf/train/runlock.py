"""One writer per run folder: an exclusive ``flock`` on ``RUN/.lock`` for the life of the job;
a start that fails takes back the folder (or the lock file) it made.

The main process of a training job takes it before it reads or writes anything in ``RUN``
and keeps it until it exits; the kernel releases it when the holder dies, however it dies,
so a crash never leaves a stale lock. A second job on a busy ``RUN`` fails at once with the
holder's host, pid and job id (written into the file by the holder).

File systems: local ones and NFSv4 (Linux maps ``flock`` to NFS byte-range locks) honour it
across nodes; Lustre needs the ``flock`` mount option, and some FUSE mounts (s3fs, gcsfuse)
ignore locks altogether: keep ``RUN`` on a POSIX shared file system.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from artclf.errors import ArtclfError
from artclf.train import hangs

LOCK_NAME = ".lock"
_JOB_ENV = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")  # name the holder's job, where there is one


class RunBusy(ArtclfError):
    """Another job holds the run folder. Not permanent: on Kubernetes the pod that replaces an
    evicted one may start while the old one still saves (and holds the lock)."""

    permanent = False


class RunLock:
    """Held while the object lives (and the process with it); ``release()`` to give it back."""

    def __init__(self, run: Path) -> None:
        # what this attempt makes, so that a failed start can take it back (discard_unused)
        self.made_folder = not run.exists()
        run.mkdir(parents=True, exist_ok=True)
        self.run, self.path = run, run / LOCK_NAME
        self.made_lock = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunBusy(
                f"{run}: another job is training into this run folder ({holder}); wait for it to end, "
                "stop it, or pass another --run"
            ) from None
        except OSError as e:
            os.close(fd)
            raise ArtclfError(
                f"{self.path}: cannot lock ({e}); is RUN on a file system without locks?"
            ) from None
        self._fd: int | None = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def discard_unused(self) -> None:
        """After a failed start, while still held: remove the run folder when this attempt made
        it and nothing of value is in it (config.json and an empty tb/ of a run that never
        stepped are not), else only the ``.lock`` this attempt made; a folder that was there
        keeps everything it had. (Removed while held: a job starting now finds it busy.)"""
        if self._fd is None:
            return
        if self.made_folder and not _holds_value(self.run):
            shutil.rmtree(self.run, ignore_errors=True)
        elif self.made_lock:
            self.path.unlink(missing_ok=True)


def _holds_value(run: Path) -> bool:
    """What a failed attempt must never delete: checkpoints, a model, history, hang evidence."""
    if any((run / name).exists() for name in ("state", "model.pt", "history.jsonl", "exits")):
        return True
    return any(p.is_file() for p in (run / "debug").rglob("*"))


def check_alone(acc: Accelerator) -> None:
    """A launcher that started N processes, each alone in its group: refuse with the cause
    (the run lock would otherwise blame "another job")."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes == 1:
        raise ArtclfError(
            f"the launcher started {world} processes (WORLD_SIZE={world}), but this one runs alone "
            f"(accelerate chose {acc.distributed_type.value}, device {acc.device}): a --multi_gpu launch "
            f"without a usable CUDA device (torch.cuda.is_available() is {torch.cuda.is_available()}). "
            "Use GPUs, or set ACCELERATE_USE_CPU=1 for DDP on the CPU (gloo)"
        )


def lock_run(acc: Accelerator, run: Path) -> tuple[RunLock | None, Path]:
    """The main process locks RUN; every rank learns the outcome and this attempt's debug
    folder, ``RUN/debug/<stamp>`` (one broadcast, always)."""
    from accelerate.utils import broadcast_object_list

    lock, shared = None, [None, hangs.stamp()]
    if acc.is_main_process:
        try:
            lock = RunLock(run)
        except ArtclfError as e:
            shared[0] = (str(e), e.permanent)
    broadcast_object_list(shared)
    if shared[0]:  # on every rank the error the lock raised: busy (RunBusy) or unusable
        message, permanent = shared[0]
        raise (ArtclfError if permanent else RunBusy)(message)
    return lock, run / hangs.DEBUG / shared[1]


def holder_info() -> dict:
    """Who takes the lock: host, pid, start time and the scheduler's job id if there is one."""
    info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    info.update({k: os.environ[k] for k in _JOB_ENV if os.environ.get(k)})
    return info


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode())
    except ValueError:  # the holder is between ftruncate and pwrite: it has just started
        return "holder just started"
    job = f", SLURM job {info['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in info else ""
    job += f", torchrun run {info['TORCHELASTIC_RUN_ID']}" if "TORCHELASTIC_RUN_ID" in info else ""
    return f"host {info.get('host')}, pid {info.get('pid')}{job}, since {info.get('since')}"
