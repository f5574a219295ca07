"""DataLoader workers' lives: they ignore the stop signals meant for their trainer, and the
trainer (or whatever process started them: train, evaluate) ends them with SIGKILL.

Shared by the input pipeline (``artclf.data``, which starts them) and the trainer's
preemption handling (``artclf.train.preemption``, which ends a process that can no longer end
well by itself).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit handler is registered before ours, below)
import signal


def ignore_stop_signals(_worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``. A stop signal sent to the whole process group
    (torchrun's and Kubernetes' SIGTERM, SLURM's scancel) must not kill the workers: PyTorch's
    worker handler dies of a TERM from anyone but the trainer, whose next batch then fails
    instead of saving; a Ctrl-C reaches the whole foreground process group, and a worker that
    dies of it fails the trainer's next batch the same way. The trainer ends its workers
    (:func:`kill_workers`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_workers() -> None:
    """SIGKILL this process's DataLoader workers (its daemonic children): they ignore SIGTERM
    (:func:`ignore_stop_signals`), so neither a TERM nor ``multiprocessing``'s exit handler ends them."""
    for child in multiprocessing.active_children():
        if child.daemon:  # never a process someone started to outlive us
            child.kill()


# multiprocessing's own exit handler SIGTERMs the daemonic children of an exiting process, then
# joins them: as the workers ignore SIGTERM (above), a process leaving on an error (a worker's
# fatal error, a bad shard set) would wait for them forever. Registered after multiprocessing's
# handler (imported above), this one runs first (atexit is last in, first out) and SIGKILLs them.
atexit.register(kill_workers)
