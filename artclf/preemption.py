"""Preemption: the signals a cluster sends before it takes the machines away, as a flag.

SLURM (``slurm/train.sbatch`` forwards ``--signal=B:USR1@300`` to the trainers; a preempting
scheduler sends TERM) and Kubernetes (TERM, then SIGKILL after the grace period) both give
the trainer time to save. The handler only sets a flag; the training loop turns it into a
stop at the same step on every rank, a saved state, and exit :data:`EXIT_PREEMPTED`.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: state saved, run the same command again to resume


class Preemption:
    """SIGTERM/SIGUSR1 set ``requested``; installed once per trainer process."""

    def __init__(self) -> None:
        self.requested = False
        self._pid = os.getpid()
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, _frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the trainer stops it
            return
        self.requested = True
        print(f"received {signal.Signals(signum).name}: saving at the next step", file=sys.stderr, flush=True)
