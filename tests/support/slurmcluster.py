"""Real SLURM clusters for the tests, brought up by ``slurm/local/up.sh`` (session fixtures):
``slurm``, one node (this machine), and ``slurm2``, two nodes, each a network namespace of its
own on a bridge (``up.sh --nodes 2``).

They need root and either the Debian packages or apt-get to install them (and iproute2 for two
nodes); where that is missing the SLURM tests are skipped, or fail under
``ARTCLF_REQUIRE_SYSTEM=1`` (tests/support/system.py). Each cluster lives in its own folder with its own
ports, so a cluster a user started with ``slurm/local/up.sh`` is untouched.
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

from tests.support import procs
from tests.support.system import can_apt, cannot

REPO = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Slurm:
    """Client side of the local cluster: sbatch/scontrol with this cluster's SLURM_CONF."""

    dir: Path
    env: dict  # SLURM_CONF, the ports, and what up.sh says jobs need (GLOO_SOCKET_IFNAME)
    nodes: int = 1
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
        for path in [self.dir / "log" / "slurmctld.log", *sorted((self.dir / "log").glob("slurmd-*.log"))]:
            lines = path.read_text(errors="replace").splitlines()
            tails.append(f"--- {path.name}\n" + "\n".join(lines[-15:]))
        return "\n".join(tails)

    def node_names(self) -> list[str]:
        return sorted(self.run("sinfo", "-h", "-N", "-o", "%N").split())

    def node_pids(self, node: str) -> list[int]:
        """Every process in the network namespace of `node` (up.sh names it after the node)."""
        out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True, check=True).stdout
        return [int(p) for p in out.split()]

    def up(self) -> str:
        """slurm/local/up.sh again: starts whatever daemon is gone (a killed node); its output."""
        cmd = ["bash", str(REPO / "slurm/local/up.sh"), "--nodes", str(self.nodes), str(self.dir)]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"slurm/local/up.sh failed:\n{res.stdout}\n{res.stderr}\n{self.logs()}"
        return res.stdout

    def release(self, job: str, deadline: float) -> None:
        """Start a requeued job now instead of after SLURM's requeue delay (~2 min, BeginTime),
        but only once SLURM is done with its previous start:
        - every node has ended it (IDLE), and slurmctld has no RPC left to send (`sdiag`: agent
          queue empty): the kill of the previous start, queued for a node that was DOWN, is
          delivered when the node is back, and would kill the new start (same job id) on it;
        - the second in which that happened has passed: slurmd refuses a credential issued within
          the second in which it revoked the job's previous one ("Job credential revoked")."""

        def settled() -> bool:
            nodes = self.run("scontrol", "show", "node", "-o").splitlines()
            agents = dict(re.findall(r"^\s*(Agent queue size|Agent count):\s*(\d+)", self.run("sdiag"), re.M))
            busy = [n.split()[0] for n in nodes if "State=IDLE " not in n]
            return bool(nodes) and not busy and agents == {"Agent queue size": "0", "Agent count": "0"}

        procs.wait_for(settled, max(deadline - time.time(), 1), "idle nodes and no pending slurmctld RPC")
        settled_second = int(time.time())
        procs.wait_for(lambda: int(time.time()) > settled_second, 5, "the next second")
        self.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def cannot_run(nodes: int) -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM needs root (slurmd starts job steps as their users)"
    if not shutil.which("slurmctld") and not can_apt():
        return "neither slurmctld nor apt-get (to install it) is on this machine"
    if nodes > 1 and not (shutil.which("ip") and shutil.which("nsenter")):
        return "a SLURM of several nodes needs ip (iproute2) and nsenter for its network namespaces"
    return None


def evidence(config, tag: str) -> Callable[[str], None]:
    """Write "[tag] line" to the terminal past pytest's capture, so CI logs show what ran."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return print

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"  [{tag}] {line}")

    return say


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, pytestconfig) -> Iterator[Slurm]:
    """One node: this machine."""
    yield from _cluster(tmp_path_factory, pytestconfig, nodes=1)


@pytest.fixture(scope="session")
def slurm2(tmp_path_factory, pytestconfig) -> Iterator[Slurm]:
    """Two nodes, each a network namespace with its own address and slurmd (up.sh --nodes 2)."""
    yield from _cluster(tmp_path_factory, pytestconfig, nodes=2)


def _cluster(tmp_path_factory, pytestconfig, nodes: int) -> Iterator[Slurm]:
    reason = cannot_run(nodes)
    if reason:
        cannot(reason)
    say = evidence(pytestconfig, "slurm")
    for attempt in range(3):
        d = tmp_path_factory.mktemp(f"slurm{nodes}n")
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
            up = subprocess.run(["bash", str(REPO / "slurm/local/up.sh"), "--nodes", str(nodes), str(d)],
                                env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
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
    # what up.sh tells the jobs to set (GLOO_SOCKET_IFNAME on several nodes): sbatch passes it on
    env |= dict(re.findall(r"^export (GLOO_SOCKET_IFNAME)=(\S+)", up.stdout, re.M))
    cluster = Slurm(d, env, nodes, say)
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
