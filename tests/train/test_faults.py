"""Faults the trainer meets, made real: a full disk (a tmpfs this test mounts) and a read-only
folder during a save, Ctrl-C (SIGINT to the process group, once and twice), and a multi-GPU
launch on a machine without CUDA. Storage outages: tests/train/test_storage_outage.py; a
stopped rank: tests/train/test_shapes.py; non-finite gradients: tests/train/test_recipe.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from artclf.train.preemption import EXIT_INTERRUPTED
from tests.conftest import history, run_cli, steps_saved, train_cmd, weights_digest
from tests.support import procs
from tests.support.system import cannot

CHECKPOINT_MB = 135  # resnet18 with 50 classes: 11.2 M parameters × 4 B × 3 (weights, AdamW's two moments)


def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        cannot(f"mount {' '.join(args)} failed ({res.stderr.strip()}): these tests need root")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs with room for one checkpoint and the run's other files, not two checkpoints."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={CHECKPOINT_MB * 3 // 2}m", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_save_that_fails_leaves_the_previous_checkpoint_newest_and_a_rerun_resumes(
    shards, small_disk, tmp_path
):
    """ENOSPC at step 2's save on a real tmpfs, then EROFS (the state folder bind-mounted
    read-only): each run exits non-zero naming the folder and the error, removes its partial
    files, and step 1 stays the newest checkpoint; with room again the rerun resumes from it
    and ends with the weights of a run never interrupted."""
    run = small_disk / "run"
    flags = (
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--save-every",
        "1",
        "--keep-last",
        "1",
        "--check-every",
        "1",
    )
    cmd = train_cmd(shards, run, *flags)[2:]
    res = run_cli("train", *cmd, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    state = run / "state"
    # torch.save reports a full disk as "unexpected pos …" without the errno: the free space says it
    assert re.search(rf"{state}: saving step 2 failed \(.*; \d MB free there\)", out), out[-3000:]
    assert "newest checkpoint is still step-00000001" in out and "Traceback" not in out, out[-3000:]
    assert steps_saved(run) == [1] and not list(state.glob(".tmp-*")), list(state.iterdir())

    _mount("-o", "remount,size=2g", str(small_disk))
    _mount("--bind", str(state), str(state))
    try:
        _mount("-o", "remount,bind,ro", str(state))
        res = run_cli("train", *cmd, timeout=600)
    finally:
        subprocess.run(["umount", str(state)], check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert f"resuming from {state}/step-00000001" in out, out[-3000:]
    assert f"{state}: saving step 2 failed (" in out and "Read-only file system" in out, out[-3000:]
    assert steps_saved(run) == [1] and not list(state.glob(".tmp-*")), list(state.iterdir())

    res = run_cli("train", *cmd, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert f"resuming from {state}/step-00000001" in res.stdout
    ref = tmp_path / "ref"
    res = run_cli("train", *train_cmd(shards, ref, *flags)[2:], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert weights_digest(run) == weights_digest(ref) and len(history(run)) == 1


def test_ctrl_c_saves_and_exits_130_and_a_second_one_exits_at_once(shards, tmp_path):
    """SIGINT to the trainer's process group (its DataLoader workers too, as a terminal's Ctrl-C
    does): one line, state saved, exit 130, no traceback. Rerun, and Ctrl-C twice: it exits
    at once, 130, without a traceback, the newest checkpoint kept."""
    run = tmp_path / "run"
    flags = ("--batch-size", "16", "--epochs", "4", "--check-every", "1", "--save-every", "2")
    cmd = [sys.executable, *train_cmd(shards, run, *flags)]

    def interrupt(times: int, when, what: str) -> tuple[int, str]:
        with procs.running(cmd) as proc:
            procs.wait_for(lambda: when(proc), 300, what, proc)
            os.killpg(proc.pid, signal.SIGINT)
            if times == 2:  # a person's second Ctrl-C comes after the first was answered
                seen = lambda: "received Ctrl-C" in procs.output(proc)  # noqa: E731
                procs.wait_for(seen, 60, "the first Ctrl-C's line", proc)
                os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=120)
            return code, procs.output(proc)

    code, out = interrupt(1, lambda _proc: steps_saved(run), "the first step checkpoint")
    assert code == EXIT_INTERRUPTED, out[-3000:]
    assert "received Ctrl-C (SIGINT): saving at the next step" in out, out[-3000:]
    saved = steps_saved(run)[-1]
    assert f"interrupted at step {saved}: state saved; rerun the same command to resume" in out, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]

    code, out = interrupt(2, lambda proc: "resuming from" in procs.output(proc), "the resumed run's start")
    assert code == EXIT_INTERRUPTED, out[-3000:]
    assert "second Ctrl-C: exiting without saving" in out, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert steps_saved(run)[-1] >= saved


def test_a_multi_gpu_launch_without_cuda_is_refused_with_its_cause(shards, tmp_path):
    """``accelerate launch --multi_gpu`` on a machine without CUDA and without ACCELERATE_USE_CPU:
    each process runs alone; the trainer says so instead of blaming the run lock."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", *train_cmd(shards, run)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "the launcher started 2 processes (WORLD_SIZE=2), but this one runs alone" in out, out[-3000:]
    assert "ACCELERATE_USE_CPU=1" in out and "another job" not in out, out[-3000:]
    assert not (run / "config.json").exists()


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        ({}, None),  # the defaults: patience 900 s, data 1200 s, collectives 1800 s, stall = ddp
        ({"ddp_timeout": 600}, "--ddp-timeout 600 s must exceed --storage-patience 900 s"),
        ({"data_timeout": 900.0}, "--data-timeout 900 s must exceed --storage-patience 900 s"),
        ({"stall_timeout": 300.0}, "--stall-timeout 300 s must exceed --storage-patience 900 s"),
        ({"ddp_timeout": 600, "storage_patience": 300.0}, None),
        ({"ddp_timeout": 10, "storage_patience": 0.0}, None),  # 0: no waiting, nothing to exceed
    ],
)
def test_timeouts_that_would_kill_a_rank_waiting_out_an_outage_are_refused(flags, refused):
    from artclf.train.config import TrainConfig

    if refused is None:
        TrainConfig(shards="s", run=Path("r"), **flags)
        return
    with pytest.raises(ValueError, match="would be killed before its storage came back") as e:
        TrainConfig(shards="s", run=Path("r"), **flags)
    assert str(e.value).startswith(refused)
