"""How a trainer ended, told to the script that launched it: ``RUN/exits/<launch>/rank-<r>-<code>.json``.

Kubernetes' failure policies and SLURM's requeue act on one exit code, but the launcher in
between (``accelerate launch``, i.e. torchrun's agent) reports any failed worker as its own
exit 1: a preemption that saved, a permanent error and a crash look alike. So a trainer that
ends for a reason it knows records it in the run folder, under the id its launch script gave
the launch (``ARTCLF_LAUNCH_ID``: ``k8s/entrypoint.sh``, ``slurm/train.sbatch``), and the
script turns the records into its own exit code without reading logs:

- a record ``78`` (:data:`EXIT_PERMANENT`): running again cannot help (a bad flag, missing or
  unreadable data, denied credentials, a non-finite stop): fail the job, do not retry;
- a record ``75`` or ``130``: the state was saved after a stop request: exit 75, resume later;
- no record: the launcher's own code (a crash, an out-of-memory kill, a hang): retry within
  the job's budget.

The code is in the file name, so a shell reads the outcome with a glob. A permanent error also
ends the launcher at once: torchrun's agent restarts a failed gang up to ``--max_restarts``
times whatever the cause, so the rank sends its agent the TERM a scheduler would send; the
agent stops its other workers and exits instead of starting the same error again.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from artclf.atomic import write_json

EXIT_PERMANENT = 78  # EX_CONFIG (sysexits.h): fix the configuration, the data or the credentials
LAUNCH_ENV = "ARTCLF_LAUNCH_ID"  # set by the launch script, one value per launch (all its ranks)
EXITS = "exits"  # RUN/exits/<launch id>/


def record(run: Path, rank: int, code: int, reason: str) -> Path | None:
    """Write this rank's outcome for the launch script; nothing without a launch id. A record
    that cannot be written is said and skipped: the launcher's own code still ends the job."""
    launch = os.environ.get(LAUNCH_ENV)
    if not launch:
        return None
    path = Path(run) / EXITS / launch / f"rank-{rank}-{code}.json"
    row = {"rank": rank, "code": code, "reason": reason, "host": socket.gethostname(), "pid": os.getpid()}
    row |= {"restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), "time": time.time()}
    try:
        write_json(path, row)
    except OSError as e:
        print(f"artclf train: warning: cannot record exit {code} in {path} ({e})", file=sys.stderr)
        return None
    return path


def permanent(run: Path, rank: int, reason: str) -> None:
    """Record exit 78 and end this rank's launcher, so that it starts no second attempt."""
    record(run, rank, EXIT_PERMANENT, reason)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun agent is the parent (accelerate launch)
        print(
            f"artclf train [rank {rank}]: a permanent error: stopping the launcher (pid {os.getppid()}) "
            "instead of letting it restart the same error",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getppid(), signal.SIGTERM)


def bad_usage(argv: Sequence[str] | None) -> None:
    """The flags did not parse (argparse exits 2): permanent, recorded in the ``--run`` they name."""
    args = list(sys.argv[1:] if argv is None else argv)
    run = next((a.partition("=")[2] for a in args if a.startswith("--run=")), None)
    if run is None and "--run" in args[:-1]:
        run = args[args.index("--run") + 1]
    if run:
        permanent(Path(run), int(os.environ.get("RANK", "0")), "the flags did not parse (exit 2)")
