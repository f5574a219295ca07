"""Names in /etc/hosts for the length of a test: what cluster DNS would answer for a pod name.

Lines are appended with a marker and removed again under the lock that slurm/local/up.sh and
down.sh take for their own lines, rewriting the file in place (it may be a bind mount).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

HOSTS = Path("/etc/hosts")
LOCK = Path("/run/lock/artclf-local-slurm.lock")  # the lock of slurm/local/up.sh and down.sh


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def names(addresses: dict[str, str]) -> Iterator[None]:
    """``{name: address}`` resolvable by every process while the block runs."""
    mark = f"# artclf-test {os.getpid()} {uuid.uuid4().hex[:8]}"
    lines = [f"{address} {name} {mark}\n" for name, address in addresses.items()]
    with _locked(), HOSTS.open("a") as f:
        f.writelines(lines)
    try:
        yield
    finally:
        with _locked():
            kept = [line for line in HOSTS.read_text().splitlines(keepends=True) if mark not in line]
            HOSTS.write_text("".join(kept))
