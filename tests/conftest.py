"""Shared fixtures: tiny data sets made by the project itself (no Kaggle download here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``python -m artclf <args>`` in a subprocess; returns CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "artclf", *map(str, args)],
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small sample data set with every quirk, made once per test session."""
    from artclf.sample_data import SampleDataConfig, generate

    out = tmp_path_factory.mktemp("sample") / "data"
    generate(SampleDataConfig(out=out, scale=0.02, seed=7, max_side=128))
    return out


from tests.s3server import s3_server  # noqa: E402, F401  (session fixture: a real S3 server)
from tests.slurmcluster import slurm  # noqa: E402, F401  (session fixture: a real local SLURM)
