"""DataLoader workers' lives: how many a process starts (``--workers auto``), they ignore the
stop signals meant for their trainer, and the trainer (or whatever process started them: train,
evaluate) ends them with SIGKILL.

Shared by the input pipeline (``artclf.data``, which starts them) and the trainer's
preemption handling (``artclf.train.preemption``, which ends a process that can no longer end
well by itself).
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit handler is registered before ours, below)
import os
import signal

# More workers than this rarely feed one GPU faster (JPEG decode of pre-resized shards) and each
# holds its own prefetched batches in memory; an explicit --workers goes beyond it.
MAX_AUTO_WORKERS = 8
WORKERS_HELP = (
    f"DataLoader worker processes per process: auto (the CPUs this process may use, divided by the "
    f"processes on its node, LOCAL_WORLD_SIZE; at least 1, at most {MAX_AUTO_WORKERS}) or a count "
    "(0: load in the main process)"
)


def parse_workers(text: str) -> int | str:
    """``--workers``: ``"auto"`` or a count >= 0."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--workers takes auto or a count >= 0, got {text!r}")
    return n


def check_workers(value: object) -> None:
    """A config's ``workers`` (from a flag or a TOML file): ``"auto"`` or an int >= 0."""
    if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"--workers takes auto or a count >= 0, got {value!r}")


def auto_workers(cpus: int | None = None, local_processes: int | None = None) -> tuple[int, str]:
    """(workers per process, why): the CPUs this process may use (its affinity: a SLURM or
    cgroup cpuset, taskset; not the machine's count) shared by the processes of the node, each
    with its workers, at least 1 (reading overlaps the model's step) and at most
    :data:`MAX_AUTO_WORKERS`. More workers than CPUs only contend (PyTorch warns of it)."""
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun / accelerate launch
    n = max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_processes)))
    per = "process" if local_processes == 1 else "processes"
    why = f"auto: {cpus} CPUs / {local_processes} {per} on this node, cap {MAX_AUTO_WORKERS}"
    return n, why.replace("1 CPUs", "1 CPU")


def resolve_workers(value: int | str) -> tuple[int, str]:
    """``--workers`` as a count, and the reason for it (printed at start)."""
    if value == "auto":
        return auto_workers()
    if value == 0:
        return 0, "--workers 0: batches are loaded in the main process"
    return int(value), f"--workers {value}"


def workers_phrase(n: int, why: str) -> str:
    """``"2 workers per process (auto: …)"``, for a start banner."""
    return f"{n} worker{'' if n == 1 else 's'} per process ({why})"


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
