"""A real single-node SLURM for the tests, brought up by ``slurm/local/up.sh`` (session fixture).

It needs root and either the Debian packages or apt-get to install them; where that is missing
the SLURM tests are skipped, or fail under ``ARTCLF_REQUIRE_SYSTEM=1`` (tests/system.py). The
cluster lives in its own folder with its own ports, so a cluster a user started with
``slurm/local/up.sh`` is untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import procs
from tests.system import can_apt, cannot

REPO = Path(__file__).resolve().parents[1]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Slurm:
    """Client side of the local cluster: sbatch/scontrol with this cluster's SLURM_CONF."""

    dir: Path
    env: dict
    say: Callable[[str], None] = print  # job ids and states, shown even when pytest captures output
    submitted: list[str] = field(default_factory=list)  # every job id, for cancel_unfinished

    def run(self, *cmd: str, check: bool = True, env: dict | None = None) -> str:
        res = subprocess.run(
            cmd, cwd=REPO, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr}")
        return res.stdout

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        job = self.run("sbatch", "--parsable", *args, env=env).strip().split(";")[0]
        self.submitted.append(job)
        self.say(f"submitted job {job}: sbatch {' '.join(args)}")
        return job

    def cancel_unfinished(self, timeout: float = 60) -> None:
        """scancel every submitted job that has not ended, and wait until none holds the node:
        a test that fails mid-job leaves nothing running into the next one."""
        live = [j for j in self.submitted if self._unfinished(j)]
        for job in live:
            self.say(f"cancelling job {job} (the test ended before it did)")
            self.run("scancel", job, check=False)
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            live = [j for j in live if self._unfinished(j)]
            time.sleep(0.5)
        self.submitted.clear()

    def _unfinished(self, job: str) -> bool:
        return any(t["JobState"] not in FINAL for t in self.job(job, check=False))

    def job(self, job: str, check: bool = True) -> list[dict]:
        """`scontrol show job -o` as dicts (one per array task); [] for a job slurmctld forgot
        (with check=False)."""
        out = self.run("scontrol", "show", "job", "-o", job, check=check)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def wait(self, job: str, until: set[str], timeout: float = 300) -> list[dict]:
        """Poll until every task of `job` is in `until`; fail early on a final state outside it
        (the job is cancelled when this fails)."""
        try:
            return self._wait(job, until, timeout)
        except BaseException:
            self.run("scancel", job, check=False)
            raise

    def _wait(self, job: str, until: set[str], timeout: float) -> list[dict]:
        deadline = time.time() + timeout
        seen = None
        while True:
            tasks = self.job(job)
            states = [t["JobState"] for t in tasks]
            if states != seen:
                self.say(f"job {job}: " + " ".join(f"{t['JobId']}={t['JobState']}" for t in tasks))
                seen = states
            if tasks and all(s in until for s in states):
                return tasks
            bad = [t for t in tasks if t["JobState"] in FINAL - until]
            if bad:
                raise AssertionError(f"job {job} ended {bad[0]['JobState']}: {self.logs()}")
            if time.time() > deadline:
                raise AssertionError(f"job {job} still {states} after {timeout:.0f} s: {self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        tails = []
        for name in ("slurmctld.log", "slurmd.log"):
            lines = (self.dir / "log" / name).read_text(errors="replace").splitlines()
            tails.append(f"--- {name}\n" + "\n".join(lines[-15:]))
        return "\n".join(tails)


def _cannot() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM needs root (slurmd starts job steps as their users)"
    if not shutil.which("slurmctld") and not can_apt():
        return "neither slurmctld nor apt-get (to install it) is on this machine"
    return None


def _terminal(config) -> Callable[[str], None]:
    """Write a line to the terminal past pytest's capture, so CI logs show the jobs."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return print

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"  [slurm] {line}")

    return say


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, pytestconfig) -> Iterator[Slurm]:
    reason = _cannot()
    if reason:
        cannot(reason)
    say = _terminal(pytestconfig)
    for attempt in range(3):
        d = tmp_path_factory.mktemp("slurm")
        ctld_port, slurmd_port = procs.free_ports(2)  # below the ephemeral range; retried below
        env = {
            **os.environ,
            "ARTCLF_SLURM_CTLD_PORT": str(ctld_port),
            "ARTCLF_SLURM_SLURMD_PORT": str(slurmd_port),
            "SLURM_CONF": str(d / "slurm.conf"),
            # jobs inherit the submitting environment: the venv's artclf/accelerate/tensorboard first
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        try:
            up = subprocess.run(["bash", str(REPO / "slurm/local/up.sh"), str(d)], env=env,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        except BaseException:
            _down(d, env)  # whatever up.sh had started
            raise
        if up.returncode == 0:
            break
        _down(d, env)
        logs = " ".join(p.read_text(errors="replace") for p in (d / "log").glob("*.log"))
        if attempt == 2 or "in use" not in logs + up.stderr:  # only a taken port is worth a retry
            pytest.fail(f"slurm/local/up.sh failed:\n{up.stdout}\n{up.stderr}\n{logs[-3000:]}")
        say(f"a port was taken ({ctld_port}, {slurmd_port}): starting again on others")
    cluster = Slurm(d, env, say)
    try:
        for line in up.stdout.splitlines():
            cluster.say(line)
        yield cluster
    finally:
        try:
            cluster.cancel_unfinished()
        finally:
            error = _down(d, env)
    assert error is None, error


def _down(d: Path, env: dict) -> str | None:
    """slurm/local/down.sh on what up.sh made in ``d`` (nothing when it made nothing); its
    error, or None."""
    if not (d / ".artclf-local-slurm").exists():
        return None
    res = subprocess.run(["bash", str(REPO / "slurm/local/down.sh"), str(d)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return None if res.returncode == 0 else f"slurm/local/down.sh failed:\n{res.stdout}\n{res.stderr}"
