"""How a trainer process ends: preemption signals as a flag, and two watchdogs that end it
when it can no longer end well by itself.

SLURM (``slurm/train.sbatch`` forwards ``--signal=B:USR1@300`` to the trainers; a preempting
scheduler sends TERM) and Kubernetes (TERM, then SIGKILL after the grace period) both give
the trainer time to save. The handler only sets a flag; the training loop turns it into a
stop at the same step on every rank, a saved state, and exit :data:`EXIT_PREEMPTED`. Ctrl-C
(SIGINT; torchrun passes it on to its workers) is the same stop, exit
:data:`EXIT_INTERRUPTED`; a second one ends the process at once, without a traceback.

A Python handler runs only between bytecodes of the main thread, so a rank blocked in a
collective (a peer is dead or stopped) never sees its flag. The signal still reaches a
wake-up pipe at once (``signal.set_wakeup_fd``); a thread reading it gives the main thread
``deadline`` seconds to start saving, then dumps every thread's stack and exits
:data:`EXIT_HUNG`. Under torchrun (``accelerate launch``) a second thread exits when the
launcher is gone: its workers run in sessions of their own, and a ``kill -9`` of the
launcher would otherwise leave them training into the run folder.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import select
import signal
import sys
import threading
import time

from artclf.workers import kill_workers

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: state saved, run the same command again to resume
EXIT_HUNG = 70  # EX_SOFTWARE: stopped without saving (hung on a stop signal, or orphaned)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C: state saved
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preemption:
    """SIGTERM/SIGUSR1/SIGINT set ``requested`` (SIGINT also ``interrupted``); installed once per
    trainer process (main thread).

    ``acknowledge()`` says the loop has seen the flag and is saving; without it within
    ``deadline`` seconds of the signal the process dumps its stacks and exits EXIT_HUNG.
    """

    def __init__(self, deadline: float = 120.0) -> None:
        self.requested = self.interrupted = False
        self.deadline = deadline
        self._acknowledged = threading.Event()
        self._pid = os.getpid()
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        # a forked DataLoader worker would write its own signals (its TERM at shutdown) here
        os.register_at_fork(after_in_child=_no_wakeup_fd)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._handler)
        threading.Thread(target=self._watch, args=(read,), daemon=True, name="artclf-stop-deadline").start()

    def acknowledge(self) -> None:
        self._acknowledged.set()

    def _handler(self, signum, _frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the trainer stops it
            return
        if signum == signal.SIGINT and self.interrupted:
            _exit_now()  # normally the watcher thread has done it already
        if signum == signal.SIGINT:
            self.interrupted = True
        if not self.requested:
            what = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
            again = "; Ctrl-C again to exit at once without saving" if signum == signal.SIGINT else ""
            print(f"received {what}: saving at the next step{again}", file=sys.stderr, flush=True)
        self.requested = True

    def _watch(self, read_fd: int) -> None:
        due, interrupts = None, 0
        while True:
            ready, _, _ = select.select([read_fd], [], [], 1.0)
            got = os.read(read_fd, 64) if ready else b""
            interrupts += got.count(int(signal.SIGINT))
            if interrupts >= 2:  # the main thread may be blocked in C: do not wait for its handler
                _exit_now()
            if due is None and {b for b in got} & {int(s) for s in _STOP_SIGNALS}:
                due = time.monotonic() + self.deadline
            if due is not None and not self._acknowledged.is_set() and time.monotonic() > due:
                die(
                    f"a stop signal came {self.deadline:.0f} s ago and the main thread has not reached "
                    "a point where it can save (blocked in a collective or a read?)"
                )


def watch_launcher(interval: float = 1.0) -> None:
    """Exit when the process that started this one is gone (only under torchrun)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # run by hand or by a plain launcher: no watch
        return
    parent = os.getppid()

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        die(f"the launcher (pid {parent}) is gone; exiting so that no orphan keeps writing the run")

    threading.Thread(target=loop, daemon=True, name="artclf-launcher-watch").start()


def die(reason: str, code: int = EXIT_HUNG) -> None:
    """Say why, dump every thread's stack (where each one waits), end this process and its workers now.

    ``os._exit``: a process whose collectives are broken must not run atexit handlers or
    destroy its process group (either can block for good).
    """
    rank = os.environ.get("RANK", "0")
    print(f"artclf train [rank {rank}, pid {os.getpid()}]: {reason}; stacks:", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    kill_workers()  # they would linger otherwise
    os._exit(code)


def _exit_now() -> None:
    print("second Ctrl-C: exiting without saving (the newest checkpoint in RUN/state is kept)",
          file=sys.stderr, flush=True)  # fmt: skip
    kill_workers()
    os._exit(EXIT_INTERRUPTED)


def _no_wakeup_fd() -> None:
    # ValueError: forked from a thread other than the main one, which runs no handlers anyway
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
