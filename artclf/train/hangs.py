"""Evidence of a hang, in the run folder: each rank's stacks in ``RUN/debug/<stamp>/rank-<r>.txt``.

A job that stops making progress is ended by one of three clocks: a collective that waits
longer than ``--ddp-timeout`` raises (gloo) or is aborted by NCCL's watchdog; a DataLoader
that waits longer than ``--data-timeout`` raises; and :class:`Watch`, a thread of each rank,
ends a rank that made no progress (a micro-batch trained, a batch evaluated, a save) for
``--stall-timeout`` seconds, which also catches what no timeout covers. Whichever fires
first, the rank writes what it was doing before it goes: a header of ``key: value`` lines
(rank, host, pid, time, reason, step, epoch, phase, seconds since progress, the main
thread's id), a blank line, the exception's traceback when one ended it, and every thread's
stack (``faulthandler``). The main thread marks its phase as it goes (data, forward and its
soft-F1 all-reduce, backward and DDP's gradient all-reduce, the step check, save,
evaluation), so a rank waiting in a collective says which one even where the wait is in C++.

``<stamp>`` is the job attempt's start (UTC), agreed by all ranks at start: one folder per
attempt. A rank that cannot write (SIGSTOPped, SIGKILLed, a dead node) leaves no file, which
is itself the clue; ``artclf debug RUN`` reads the folder. NCCL's Flight Recorder dumps
(``nccl-rank-<r>``) go to the same folder when the launcher enables it (docs/debugging.md).
"""

from __future__ import annotations

import faulthandler
import os
import socket
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from artclf.train.preemption import die

DEBUG = "debug"  # RUN/debug/<stamp>/


def stamp() -> str:
    """Now, as the name of an attempt's debug folder."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class Watch:
    """A rank's progress and phase, and the stall watchdog over them (``start()``).

    ``progress(phase)`` after each unit of work; ``phase(text)`` when the main thread enters a
    part that may wait on others. Both are attribute writes: free in the step loop.
    """

    def __init__(self, folder: Path, rank: int, world: int, stall_s: float) -> None:
        self.folder, self.rank, self.world, self.stall_s = folder, rank, world, stall_s
        self.state = None  # the TrainState, once there is one: its step and epoch go in the header
        self.where = "setting up"
        self.last = time.monotonic()
        self._running = False
        self._written = threading.Lock()

    def phase(self, where: str) -> None:
        self.where = where

    def progress(self, where: str | None = None) -> None:
        self.last = time.monotonic()
        if where is not None:
            self.where = where

    def start(self) -> None:
        """From now on, ``stall_s`` seconds without progress end this rank with its stacks written."""
        self.progress()
        if not self._running:
            self._running = True
            threading.Thread(target=self._loop, daemon=True, name="artclf-stall-watch").start()

    def stop(self) -> None:
        self._running = False

    def _loop(self) -> None:
        while self._running:
            time.sleep(min(5.0, max(0.2, self.stall_s / 20)))
            idle = time.monotonic() - self.last
            if self._running and idle > self.stall_s:
                reason = f"no progress for {idle:.0f} s (--stall-timeout {self.stall_s:g} s), {self.where}"
                path = self.dump(reason)
                _nccl_trace(self.folder, self.rank)
                die(f"{reason}; stacks in {path}")

    def dump(self, reason: str, error: BaseException | None = None) -> Path | None:
        """Write this rank's header, ``error``'s traceback and every thread's stack; the file,
        or None when it could not be written (the reason then only reaches stderr, via die)."""
        if not self._written.acquire(blocking=False):  # the watchdog and an exception at once
            return None
        path = self.folder / f"rank-{self.rank}.txt"
        state = self.state
        header = {
            "rank": f"{self.rank} of {self.world}",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reason": " ".join(reason.split()),
            "step": state.step if state is not None else "",
            "epoch": state.epoch + 1 if state is not None else "",
            "phase": self.where,
            "last_progress_s_ago": f"{time.monotonic() - self.last:.1f}",
            "main_thread": f"0x{threading.main_thread().ident:016x}",
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write("".join(f"{k}: {v}\n" for k, v in header.items()) + "\n")
                if error is not None:
                    f.write("".join(traceback.format_exception(error)) + "\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            return None
        return path


def _nccl_trace(folder: Path, rank: int) -> None:
    """The Flight Recorder's entries of this rank, where NCCL's own dump (on a collective
    timeout) will not come: a stall ends the process before any timeout. Same format and name."""
    import torch.distributed as dist

    try:
        if dist.is_initialized() and dist.get_backend() == "nccl":
            from torch._C._distributed_c10d import _dump_nccl_trace

            (folder / f"nccl-rank-{rank}").write_bytes(_dump_nccl_trace())
    except Exception:  # evidence is best effort: the rank is going anyway
        pass
