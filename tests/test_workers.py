"""``--workers auto``: the CPUs this process may use (its affinity, as the kernel reports it in a
child whose affinity was really changed) shared by the processes of its node, capped at 8; an
explicit count wins. (The banner and the absent PyTorch warning: tests/test_evaluate.py and
tests/train/test_train.py, on real runs.)"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from tests.support.procs import REPO

CHILD = """
import json, os, sys
os.sched_setaffinity(0, {cpus})
from artclf.workers import auto_workers
n, why = auto_workers()
print(json.dumps({{"n": n, "why": why, "affinity": len(os.sched_getaffinity(0))}}))
"""


def _in_child(cpus: set[int], local_world: str | None) -> dict:
    """``auto_workers()`` in a child process pinned to ``cpus``, with LOCAL_WORLD_SIZE as given."""
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_WORLD_SIZE"}
    if local_world is not None:
        env["LOCAL_WORLD_SIZE"] = local_world
    res = subprocess.run(
        [sys.executable, "-c", CHILD.format(cpus=sorted(cpus))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(res.stdout)


@pytest.mark.parametrize("local_world", [None, "1", "2", "3"])
def test_auto_is_the_affinity_shared_by_the_node_processes(local_world):
    allowed = sorted(os.sched_getaffinity(0))
    for cpus in ({allowed[0]}, set(allowed)):
        out = _in_child(cpus, local_world)
        procs = int(local_world or 1)
        assert out["affinity"] == len(cpus)  # the child really runs on those CPUs
        assert out["n"] == max(1, min(8, len(cpus) // procs)), out
        per = "process" if procs == 1 else "processes"
        assert f"auto: {len(cpus)} CPU" in out["why"] and f"/ {procs} {per} on this node" in out["why"], out


def test_auto_is_capped_at_8_and_never_below_1():
    from artclf.workers import auto_workers

    assert auto_workers(cpus=64, local_processes=1)[0] == 8
    assert auto_workers(cpus=64, local_processes=4)[0] == 8
    assert auto_workers(cpus=64, local_processes=16)[0] == 4
    assert auto_workers(cpus=2, local_processes=4)[0] == 1
    assert "cap 8" in auto_workers(cpus=64, local_processes=1)[1]


def test_an_explicit_count_wins_and_bad_values_are_refused():
    from artclf.workers import parse_workers, resolve_workers

    assert parse_workers("auto") == "auto" and parse_workers("3") == 3 and parse_workers("0") == 0
    assert resolve_workers(3) == (3, "--workers 3")
    assert resolve_workers(0)[0] == 0 and "in the main process" in resolve_workers(0)[1]
    for bad in ("-1", "many", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto or a count"):
            parse_workers(bad)


def test_train_and_evaluate_default_to_auto_and_keep_what_was_asked():
    from artclf.config import parse
    from artclf.evaluate import EvaluateConfig
    from artclf.train.config import TrainConfig

    train = parse(TrainConfig, ["--shards", "s", "--run", "r"], "t")
    assert train.workers == "auto"
    assert parse(TrainConfig, ["--shards", "s", "--run", "r", "--workers", "2"], "t").workers == 2
    assert parse(EvaluateConfig, ["--model", "m", "--shards", "s"], "e").workers == "auto"
    with pytest.raises(ValueError, match="--workers"):
        TrainConfig(shards="s", run="r", workers="some")  # e.g. from a TOML file
