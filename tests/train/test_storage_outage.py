"""The trainer through S3 outages: a real S3 server (tests/support/s3server.py) stopped in the
middle of a 1-process run and started again. Started again as it was, the run waits each outage
out, completes every epoch without skipping a sample, and counts the wait of each epoch
(``storage_wait_s`` in history.jsonl) as the outage measured from here; started again with
other keys, it ends at once on the refusal, naming the 403 and no secret.

Reads hit S3 (``--cache-dir none``: one ranged GET per sample), so an outage mid-epoch stops
the train stream's reads; ``--record-batches`` writes a line per step, which says where the run
is. The server is crashed (SIGKILL), so the outage starts when the test stops it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import history, train_cmd
from tests.support import procs
from tests.support.s3server import Weed, s3_outage  # noqa: F401  (fixture: a server to stop and restart)

PATIENCE_S = 300  # far above the outages here, far below a hung test's cost
# What waiting may add beyond an outage: storage's backoff when the store comes back (capped at
# 30 s) and the attempt under way (botocore: 5 attempts, up to about 15 s), with some room.
LAG_S = 50.0
RUN_S = 600.0  # the whole run, outages included (about 2.5 minutes here)


@pytest.fixture
def on_s3(s3_outage: Weed, shards: Path) -> str:  # noqa: F811  (the fixture imported above)
    """The ``shards`` fixture on the test's own server."""
    client, bucket = s3_outage.server.client(), s3_outage.server.bucket
    for path in sorted(p for p in shards.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"shards/{path.relative_to(shards).as_posix()}")
    return f"s3://{bucket}/shards"


def steps(run: Path) -> list[dict]:
    """RUN/batches.jsonl so far: one row per optimizer step (step, epoch)."""
    path = run / "batches.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def trainer(on_s3: str, run: Path, server_env: dict, *extra: str):
    cmd = [sys.executable, *train_cmd(on_s3, run, "--epochs", "2", "--batch-size", "16", *extra)]
    cmd += ["--cache-dir", "none", "--record-batches", "--storage-patience", str(PATIENCE_S)]
    # one thread per process: the trainer and its loader worker share 2 cores here
    return procs.running(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **server_env})


def wait_for_step(proc, run: Path, epoch: int) -> None:
    """Until the run has taken the first optimizer step of ``epoch`` (1-based): it is inside it."""
    what = f"the first step of epoch {epoch}"
    procs.wait_for(lambda: any(r["epoch"] == epoch for r in steps(run)), 300, what, proc, every=0.05)


@pytest.mark.slow  # ~2.5 minutes: a 20 s and a 90 s outage, and the time to notice each has ended
def test_a_run_waits_out_two_outages_and_loses_no_sample(s3_outage, on_s3, tmp_path, record_property):  # noqa: F811
    run = tmp_path / "run"
    outages = []
    with trainer(on_s3, run, s3_outage.server.env()) as proc:
        for epoch, seconds in ((1, 20), (2, 90)):
            wait_for_step(proc, run, epoch)
            stopped = s3_outage.stop(crash=True)
            time.sleep(seconds)
            outages.append(s3_outage.restart() - stopped)
        procs.wait_for(lambda: proc.poll() is not None, RUN_S, "the end of the run", proc)
        out = procs.output(proc)
    assert proc.returncode == 0, out[-4000:]
    rows = history(run)
    waits = [r.get("storage_wait_s") for r in rows]
    record_property("outages_and_waits", [(round(o, 1), w) for o, w in zip(outages, waits, strict=False)])
    assert [r["epoch"] for r in rows] == [1, 2], out[-4000:]
    assert all(r["skipped_samples"] == 0 and r["val_skipped_samples"] == 0 for r in rows), rows
    for row, outage in zip(rows, outages, strict=True):
        assert outage - 2.0 <= row["storage_wait_s"] <= outage + LAG_S, (row["storage_wait_s"], outage)
    assert out.count("artclf: waiting for s3://") == 2 and out.count(" reachable again after ") == 2, out
    assert "skipping" not in out, out[-4000:]


def test_a_restart_with_other_keys_ends_the_run_on_the_403(s3_outage, on_s3, tmp_path):  # noqa: F811
    run, old = tmp_path / "run", s3_outage.server
    with trainer(on_s3, run, old.env()) as proc:
        wait_for_step(proc, run, 1)
        s3_outage.stop(crash=True)
        time.sleep(3)
        s3_outage.restart(other_keys=True)
        procs.wait_for(lambda: proc.poll() is not None, 120, "the end of the run", proc)
        out = procs.output(proc)
    assert proc.returncode != 0, out[-4000:]
    assert "access denied (403 " in out, out[-4000:]
    new = s3_outage.server
    for secret in (old.access_key, old.secret_key, new.access_key, new.secret_key):
        assert secret not in out
