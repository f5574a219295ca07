"""The trainer in the shapes users run, on real CPU processes (gloo) with a tiny model: world
sizes 1-4 against 1, 2 and 5 val shards (the real job has fewer val shards than ranks), a rank
whose val samples are all unreadable, a killed launcher, a second job on a busy run folder, a
stopped rank, torn checkpoints, elastic restarts, resumes across --compile and world sizes.

Every run has a hard timeout that kills its process tree, so a hang fails instead of blocking.
Validation metrics are checked against a plain single-process loop over the same model.pt.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from artclf import manifest
from artclf.data import read_info
from artclf.metrics.classification import classification_metrics
from artclf.shard import ShardConfig, shard
from artclf.train.runlock import RunLock
from tests.conftest import history, plain_predictions, steps_saved, weights_digest
from tests.support.cpu_launch import accelerate_cmd, finish, launch, rank_pids, start
from tests.support.procs import kill_tree, processes_with, wait_for
from tests.support.procs import output as procs_output

GLOBAL_BATCH = "24"  # divisible by 1, 2, 3 and 4 ranks
TINY = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--log-every", "1"]
TINY += ["--batch-size", GLOBAL_BATCH, "--lr", "2e-3"]
EXACT2 = ("--epochs", "3", "--record-batches")  # the recipe of reference2 and the runs compared with it


def train_args(shards: Path, run: Path, *extra: str, workers: str = "0") -> list[str]:
    return [
        "-m",
        "artclf.train",
        "--shards",
        str(shards),
        "--run",
        str(run),
        *TINY,
        "--workers",
        workers,
        *extra,
    ]


def assert_resumed_to_the_end(run: Path, shards: Path, epochs: int, keep: int = 3) -> None:
    """Each epoch once, at the step it must end on; the last checkpoint is the last step; no more
    than --keep-last (default 3) checkpoints are left."""
    steps = read_info(str(shards))["splits"]["train"]["num_samples"] // int(GLOBAL_BATCH)
    assert [(r["epoch"], r["step"]) for r in history(run)] == [(e, e * steps) for e in range(1, epochs + 1)]
    assert steps_saved(run)[-1] == epochs * steps and len(steps_saved(run)) <= keep


@pytest.fixture(scope="module")
def shard_sets(work, tmp_path_factory) -> dict[int, Path]:
    """val shards -> a shard set with exactly that many val shards (32 px)."""
    n_val = sum(1 for r in manifest.read_manifest(work) if r.get("keep") and r.get("split") == "val")
    out = {}
    for n_shards in (1, 2, 5):
        d = tmp_path_factory.mktemp(f"val{n_shards}")
        shard(ShardConfig(work=work, out=str(d), store_size=32, shard_samples=math.ceil(n_val / n_shards)))
        assert len(read_info(str(d))["splits"]["val"]["filenames"]) == n_shards
        out[n_shards] = d
    return out


@pytest.fixture(scope="module")
def unreadable_rank(shard_sets, tmp_path_factory) -> Path:
    """2 val shards, every image of the second one corrupt: rank 1 of 2 reads nothing usable."""
    d = tmp_path_factory.mktemp("unreadable")
    shutil.copytree(shard_sets[2], d, dirs_exist_ok=True)
    info = read_info(str(d))
    bad = d / info["splits"]["val"]["filenames"][1]
    members = []
    with tarfile.open(bad) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            members.append((m, b"not a jpeg" if m.name.endswith(".jpg") else data))
    with tarfile.open(bad, "w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return d


def assert_same_metrics(run: Path, shards: Path) -> None:
    got = json.loads((run / "val_metrics.json").read_text())
    ref = classification_metrics(*plain_predictions(run / "model.pt", shards))
    assert got["confusion_matrix"] == ref["confusion_matrix"]
    for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert got[k] == ref[k], k
    for k in ("confidence", "log_loss"):
        assert got[k] == pytest.approx(ref[k], abs=1e-5), k


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_shape_finishes_with_exact_validation(world, shard_sets, unreadable_rank, tmp_path):
    """val shards 1, 2, 5, and 2 of which the second is unreadable, on 1-4 ranks."""
    sets = [shard_sets[1], shard_sets[2], shard_sets[5], unreadable_rank]
    flags = [*TINY, "--workers", "0", "--epochs", "1"]  # dist_shapes adds --shards and --run
    rc, out = launch(
        world,
        "tests/support/launched/dist_shapes.py",
        str(tmp_path),
        *map(str, sets),
        "--",
        *flags,
        timeout=300,
    )
    assert rc == 0, out[-4000:]
    for i, shards in enumerate(sets):
        run = tmp_path / f"run{i}"
        assert [r["epoch"] for r in history(run)] == [1], shards
        assert json.loads((run / "config.json").read_text())["derived"]["world_size"] == world
        assert_same_metrics(run, shards)
    unreadable = json.loads((tmp_path / "run3" / "val_metrics.json").read_text())["skipped_samples"]
    assert unreadable == read_info(str(unreadable_rank))["splits"]["val"]["shard_lengths"][1] > 0


@pytest.fixture(scope="module")
def reference2(shard_sets, tmp_path_factory) -> Path:
    """2 ranks, 3 epochs, never stopped, --record-batches: what every interrupted run below,
    on any number of ranks, must have trained on (and on 2 ranks, bitwise the same weights)."""
    run = tmp_path_factory.mktemp("reference2") / "run"
    rc, out = launch(2, *train_args(shard_sets[2], run, *EXACT2), timeout=300)
    assert rc == 0, out[-4000:]
    return run


@pytest.mark.slow
def test_launcher_sigkill_leaves_no_trainer_and_the_rerun_resumes_past_a_torn_checkpoint(
    shard_sets, reference2, tmp_path
):
    """The crash users meet: the launcher is killed (OOM killer, kill -9), the newest checkpoint
    is torn (a lost write), the same command is run again: it ends with the weights and global
    batches of the run never stopped."""
    run = tmp_path / "run"
    args = train_args(shard_sets[2], run, *EXACT2, "--save-every", "1", workers="1")
    proc = start(accelerate_cmd(2, *args))
    try:
        wait_for(lambda: len(steps_saved(run)) >= 2, 180, "two step checkpoints", proc)
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only: its workers are in sessions of their own
        proc.wait()
        deadline = time.monotonic() + 30
        while processes_with(str(run)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_with(str(run))
    finally:
        kill_tree(proc.pid)
        for pid in processes_with(str(run)):
            kill_tree(pid)
    assert not left, f"processes of the run alive 30 s after the launcher was killed: {left}"
    *_, before, newest = steps_saved(run)
    weights = run / "state" / f"step-{newest:08d}" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc, out = launch(2, *args, timeout=240)
    assert rc == 0, out[-4000:]
    assert f"step-{newest:08d}: does not load" in out and "falling back" in out
    assert f"resuming from {run / 'state'}/step-{before:08d}" in out
    assert_resumed_to_the_end(run, shard_sets[2], epochs=3)
    assert weights_digest(run) == weights_digest(reference2)
    assert (run / "batches.jsonl").read_text() == (reference2 / "batches.jsonl").read_text()


@pytest.mark.slow
def test_two_ranks_stopped_every_way_resume_to_the_same_weights_bitwise(shard_sets, reference2, tmp_path):
    """2 ranks, one run folder, rerun by the same command after each stop (the save interval
    aside): SIGKILL of everything after the first step's checkpoint; SIGTERM to the launcher
    (torchrun forwards it) mid-epoch, so the ranks save at the epoch's last step; SIGUSR1 to
    the ranks (what slurm/train.sbatch forwards) while they evaluate. It ends with bitwise the
    weights and the global batches of reference2, the same recipe never stopped."""
    run, shards = tmp_path / "run", shard_sets[2]
    steps = read_info(str(shards))["splits"]["train"]["num_samples"] // int(GLOBAL_BATCH)
    args = train_args(shards, run, *EXACT2, "--check-every", "1")

    def stop(save_every: str, when, signal_to, what: str) -> str:
        proc = start(accelerate_cmd(2, *args, "--save-every", save_every))
        try:
            # 20 ms: the evaluation a signal must land in lasts about a second here
            wait_for(lambda: when(proc), 300, what, proc, every=0.02)
            signal_to(proc)
            _, out = finish(proc, 120)
        finally:
            kill_tree(proc.pid)
            for pid in processes_with(str(run)):
                kill_tree(pid)
        return out

    saved = lambda step: lambda _proc: step in steps_saved(run)  # noqa: E731
    stop("1", saved(1), lambda proc: kill_tree(proc.pid), "the first step's checkpoint")
    first = steps_saved(run)[-1]
    out = stop("2", saved(4), lambda proc: os.killpg(proc.pid, signal.SIGTERM), "step 4's checkpoint")
    assert f"resuming from {run / 'state'}/step-{first:08d}" in out, out[-3000:]
    assert f"preempted at step {steps} (epoch 1)" in out, out[-3000:]
    started = lambda proc: "artclf train: 2 process(es)" in procs_output(proc)  # noqa: E731

    def usr1_to_ranks(_proc) -> None:
        for pid in rank_pids(str(run)).values():
            os.kill(pid, signal.SIGUSR1)

    out = stop("2", started, usr1_to_ranks, "the start-up line")
    assert f"preempted at step {steps} (epoch 1)" in out and "epoch 1/3:" not in out, out[-3000:]
    rc, out = launch(2, *args, "--save-every", "2", timeout=300)
    assert rc == 0, out[-4000:]
    assert_resumed_to_the_end(run, shards, epochs=3)
    assert weights_digest(run) == weights_digest(reference2)
    assert (run / "batches.jsonl").read_text() == (reference2 / "batches.jsonl").read_text()


@pytest.mark.slow
def test_a_second_job_on_a_busy_run_is_refused_and_the_first_goes_on(shard_sets, tmp_path):
    """The first job is given 50 epochs: it is still training whatever the second one's start-up
    costs; once refused, the first is preempted (TERM) and must save as usual."""
    run = tmp_path / "run"
    first = start(accelerate_cmd(2, *train_args(shard_sets[1], run, "--epochs", "50")))
    try:
        wait_for(lambda: (run / "config.json").is_file(), 180, "config.json of the first job", first)
        holder = json.loads((run / ".lock").read_text())
        t0 = time.monotonic()
        rc, out = finish(start([sys.executable, *train_args(shard_sets[1], run, "--epochs", "2")]), 60)
        refused_in = time.monotonic() - t0
        assert rc == 1, out[-3000:]
        assert "another job is training into this run folder" in out
        assert f"pid {holder['pid']}" in out and f"host {holder['host']}" in out
        assert refused_in < 30
        epochs_done = len(history(run)) if (run / "history.jsonl").exists() else 0
        assert first.poll() is None, "the first job ended"
        wait_for(lambda: (run / "history.jsonl").exists() and len(history(run)) > epochs_done,
                 180, "an epoch of the first job after the refusal", first)  # fmt: skip
        os.killpg(first.pid, signal.SIGTERM)
        rc, out = finish(first, 240)
    finally:
        kill_tree(first.pid)
    assert "preempted at step" in out and steps_saved(run), out[-4000:]
    RunLock(run).release()  # the lock went with the job: a rerun may start


@pytest.mark.slow
def test_a_stopped_rank_ends_every_rank_within_the_timeout(shard_sets, tmp_path):
    run, timeout, grace = tmp_path / "run", 10, 30
    # --storage-patience 0: a ddp timeout this short must not be refused for the 900 s default
    flags = ("--epochs", "50", "--ddp-timeout", str(timeout), "--save-every", "2", "--storage-patience", "0")
    args = train_args(shard_sets[2], run, *flags, workers="1")
    proc = start(accelerate_cmd(2, *args))
    try:
        wait_for(lambda: steps_saved(run), 180, "a saved step (the ranks are training)", proc)
        ranks = rank_pids(str(run))
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGSTOP)
        t0 = time.monotonic()
        # the agent SIGTERMs the survivors, and SIGKILLs the stopped one `grace` s later (torch
        # elastic's close() after a failed worker; TORCH_ELASTIC_SHUTDOWN_TIMEOUT does not apply)
        rc, out = finish(proc, timeout + grace + 60)
        took = time.monotonic() - t0
        left = [p for p in ranks.values() if Path(f"/proc/{p}").exists()]
    finally:
        kill_tree(proc.pid)
        for pid in processes_with(str(run)):
            kill_tree(pid)
    assert rc != 0 and took < timeout + grace + 60, (rc, took)
    assert "[rank 0," in out and "stacks:" in out and "Current thread" in out, out[-4000:]
    assert not left
    # the evidence in the run folder: rank 0's header and stacks, none from the stopped rank
    (attempt,) = sorted((run / "debug").iterdir())
    assert sorted(p.name for p in attempt.iterdir() if p.name.startswith("rank-")) == ["rank-0.txt"]
    text = (attempt / "rank-0.txt").read_text()
    header = dict(line.split(": ", 1) for line in text.split("\n\n", 1)[0].splitlines())
    assert header["rank"] == "0 of 2" and int(header["step"]) >= 2, header
    assert any(c in header["phase"] for c in ("all-reduce", "gather", "barrier")), header  # which collective
    assert "Most recent call first" in text or "most recent call first" in text, text[-2000:]


@pytest.mark.slow
def test_elastic_restart_after_a_worker_is_killed(shard_sets, reference2, tmp_path):
    run = tmp_path / "run"
    args = train_args(shard_sets[2], run, *EXACT2, "--save-every", "2", workers="1")
    # the launchers' settings (launch/README.md): with the default static rendezvous the new
    # gang reads the old gang's addresses from the agent's store (pytorch/pytorch#135712)
    restarts = ("--max_restarts", "1", "--rdzv_backend", "c10d")
    proc = start(accelerate_cmd(2, *args, launch_args=restarts), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    try:
        wait_for(lambda: steps_saved(run), 180, "step checkpoint", proc)
        saved = steps_saved(run)[-1]
        os.kill(rank_pids(str(run))[1], signal.SIGKILL)
        rc, out = finish(proc, 300)
    finally:
        kill_tree(proc.pid)
    assert rc == 0, out[-4000:]
    assert "resuming from" in out and int(out.split("resuming from")[1].split("step-")[1][:8]) >= saved
    assert_resumed_to_the_end(run, shard_sets[2], epochs=3)
    assert weights_digest(run) == weights_digest(reference2)  # a rank lost mid-epoch costs nothing else
    assert (run / "batches.jsonl").read_text() == (reference2 / "batches.jsonl").read_text()


@pytest.mark.slow
def test_resumes_on_other_world_sizes_train_on_the_same_global_batches(shard_sets, reference2, tmp_path):
    """2 ranks (compiled) -> 1 rank -> 4 ranks, each stopped (TERM, saved) and rerun on another
    world size: every optimizer step takes the global batch, keys and augmentation, of the
    2-rank run never stopped (RUN/batches.jsonl). model.pt of the compiled segment loads into a
    plain model. (Weights are not compared: BatchNorm statistics are per device.)"""
    from artclf.evaluate import EvaluateConfig
    from artclf.evaluate import run as run_evaluate

    run, shards = tmp_path / "run", shard_sets[2]
    args = train_args(shards, run, *EXACT2, "--save-every", "1", "--check-every", "1")
    compiled = ("--compile", "--compile-backend", "aot_eager")  # the wrapper is the same; faster on CPU
    segments = [
        (2, compiled, lambda: (run / "model.pt").exists()),  # epoch 1 done and evaluated
        (1, (), lambda: steps_saved(run)[-1] > start_step),  # a step on this world size
        (4, (), None),  # to the end
    ]
    for world, extra, until in segments:
        start_step = steps_saved(run)[-1] if steps_saved(run) else 0
        # one process as `python -m`: a 1-process `accelerate launch` dies of the TERM itself,
        # and the test's cleanup would then kill the trainer before it saved
        proc = start(accelerate_cmd(world, *args, *extra) if world > 1 else [sys.executable, *args, *extra])
        try:
            if until is not None:
                wait_for(until, 300, f"progress on {world} rank(s)", proc)
                os.killpg(proc.pid, signal.SIGTERM)
            rc, out = finish(proc, 300)
        finally:
            kill_tree(proc.pid)
        assert ("preempted at step" in out) == (until is not None), out[-4000:]
        if extra:
            blob = torch.load(run / "model.pt", weights_only=True)
            assert not [k for k in blob["state_dict"] if "_orig_mod" in k]
            assert_same_metrics(run, shards)
            config = EvaluateConfig(model=run / "model.pt", shards=str(shards), split="val", workers=0)
            assert run_evaluate(config) == 0
        else:
            assert f"resuming from {run / 'state'}/step-{start_step:08d}" in out
    assert rc == 0 and json.loads((run / "config.json").read_text())["derived"]["world_size"] == 4
    assert_resumed_to_the_end(run, shards, epochs=3)
    assert (run / "batches.jsonl").read_text() == (reference2 / "batches.jsonl").read_text()
