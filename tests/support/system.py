"""System parts the tests bring up themselves (a local SLURM, Debian's chromium): where one
cannot be had, its tests are skipped on a developer's machine and fail where
``ARTCLF_REQUIRE_SYSTEM=1`` (``.ci/run`` sets it), so CI never passes without running them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REQUIRE = "ARTCLF_REQUIRE_SYSTEM"


def cannot(reason: str):
    """Skip, or fail when the environment requires every system part."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {reason}")
    pytest.skip(reason)


def can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(*packages: str) -> None:
    """``apt-get install`` as root (``apt-get update`` first); fails the test with apt's output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]  # wait for another apt instead of failing at once
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *lock, *packages],
    ):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            out = f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{out}")
