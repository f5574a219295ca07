"""bench/gpu.sh, the one-call GPU check, in its CPU dry run (so it cannot rot between GPU
sessions), and its guard: a part that fails is reported and the next part still runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PARTS = ("setup", "synthetic", "data", "compiled", "recipe")


def gpu_check(out: Path, python: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = ["bash", "bench/gpu.sh", "--dry-run", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "out"
    res = gpu_check(out, sys.executable, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    for part in PARTS:
        assert re.search(rf"^{part} +ok ", summary, re.M), summary
    assert summary == res.stdout[-len(summary) :]  # the table comes last
    rows = json.loads((out / "synthetic.json").read_text())
    variants = ["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]
    assert sorted(r["variant"] for r in rows) == sorted(variants)
    assert all(r["images_per_s"] > 0 and r["warmup_s"] > 0 for r in rows)
    # the compiled run's model.pt was evaluated; the recipe ran all its epochs to model.pt
    metrics = json.loads((out / "run-compiled" / "eval" / "metrics.json").read_text())
    info = json.loads((out / "data" / "shards" / "_info.json").read_text())
    assert metrics["n"] == info["splits"]["val"]["num_samples"]
    history = (out / "run-recipe" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2 and (out / "run-recipe" / "model.pt").is_file()
    assert "2 epochs to model.pt in" in summary and "(measured)" in summary
    assert (out / "gpu.log").read_text().count("== ") >= len(PARTS)


def test_gpu_check_reports_each_failed_part_and_runs_the_rest(tmp_path):
    out = tmp_path / "out"
    res = gpu_check(out, "false", timeout=300)  # every Python step fails at once
    assert res.returncode == 1, res.stdout[-4000:]
    summary = (out / "summary.txt").read_text()
    for part in PARTS:
        assert re.search(rf"^{part} +failed \(\d+\) ", summary, re.M), summary
