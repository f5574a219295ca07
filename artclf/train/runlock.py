"""One writer per run folder: an exclusive ``flock`` on ``RUN/.lock`` for the life of the job.

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
import socket
import time
from pathlib import Path

from artclf.errors import ArtclfError

LOCK_NAME = ".lock"
_JOB_ENV = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")  # name the holder's job, where there is one


class RunBusy(ArtclfError):
    """Another job holds the run folder. Not permanent: on Kubernetes the pod that replaces an
    evicted one may start while the old one still saves (and holds the lock)."""

    permanent = False


class RunLock:
    """Held while the object lives (and the process with it); ``release()`` to give it back."""

    def __init__(self, run: Path) -> None:
        run.mkdir(parents=True, exist_ok=True)
        self.path = run / LOCK_NAME
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
