"""The trainer on CPU: real 2-process DDP (gloo) that learns, model.pt is the best epoch (by
scikit-learn, also across a resume), SIGKILL, SIGTERM and SIGUSR1 then resume to bitwise the
weights of the run never stopped, TensorBoard on the main process only, weights rules. (1 vs 2
processes: tests/test_evaluate.py.)"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
from pathlib import Path

import pytest
import torch
from sklearn import metrics as skm

from artclf.data import eval_loader, read_info
from artclf.errors import ArtclfError
from artclf.model import load_model
from artclf.train.preemption import EXIT_PREEMPTED
from tests.conftest import (
    assert_figure,
    history,
    plain_predictions,
    run_cli,
    steps_saved,
    train_cmd,
    weights_digest,
)
from tests.support import procs


def reference(model_path: Path, shards: Path, split: str = "val") -> dict:
    """Accuracy and macro F1 of ``model_path`` on ``split`` by scikit-learn, from a plain loop."""
    ys, probs, classes = plain_predictions(model_path, shards, split)
    ps, labels = probs.argmax(1), list(range(len(classes)))
    return {
        "accuracy": skm.accuracy_score(ys, ps),
        "macro_f1": skm.f1_score(ys, ps, labels=labels, average="macro", zero_division=0),
    }


def assert_model_pt_is_the_best_epoch(run: Path, shards: Path) -> None:
    """model.pt is the epoch of history.jsonl with the highest val macro F1 (the first of ties),
    and evaluating it again gives that row's figures."""
    rows = [r for r in history(run) if "val_macro_f1" in r]  # --eval-every leaves some out
    best = max(rows, key=lambda r: r["val_macro_f1"])  # max keeps the first of equal values
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["epoch"] == best["epoch"], ([(r["epoch"], r["val_macro_f1"]) for r in rows], blob["epoch"])
    ref = reference(run / "model.pt", shards)
    assert ref["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-9)
    assert ref["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_two_process_training_learns_and_logs_once(trained_run, shards):
    run = trained_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["derived"]["world_size"] == 2 and cfg["derived"]["per_device_batch"] == 16 // 2
    # on CPU the workers decode (the GPU decode path is off by default, and refused without CUDA)
    assert cfg["config"]["gpu_decode"] is False
    assert "JPEGs decoded in the workers" in (run.parent / "train.log").read_text()
    rows = history(run)
    epochs = list(range(1, 7))
    assert [r["epoch"] for r in rows] == epochs
    splits = read_info(str(shards))["splits"]
    assert [r["step"] for r in rows] == [e * (splits["train"]["num_samples"] // 16) for e in epochs]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # Far better than always answering the most common class, the best a broken model does
    # (125 train images for 50 classes: measured 0.54 on train against 0.10, 0.13 on val
    # against 0.04; training is seeded, so these do not drift between runs).
    majority = {k: max(v["class_counts"]) / v["num_samples"] for k, v in splits.items()}
    assert reference(run / "model.pt", shards, "train")["accuracy"] > 3 * majority["train"]
    assert max(r["val_accuracy"] for r in rows) > 2 * majority["val"], (majority, rows)
    assert_model_pt_is_the_best_epoch(run, shards)
    # throughput beside the whole epoch's: steady state leaves out each process's first 10 steps
    steps = splits["train"]["num_samples"] // 16
    for r in rows:
        assert r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1, r
        if (r["epoch"] - 1) * steps >= 10:  # all of the epoch's steps are past the first 10
            assert r["images_per_s_steady"] == pytest.approx(r["images_per_s"])
        elif r["epoch"] * steps <= 10:  # none of them is
            assert r["images_per_s_steady"] is None and r["data_wait_steady"] is None, r
        else:
            assert r["images_per_s_steady"] > 0 and 0 <= r["data_wait_steady"] <= 1, r
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1  # main process only
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(events[0]))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "train/data_wait",
        "train/images_per_s_steady",
        "train/data_wait_steady",
        "val/macro_f1",
        "val/accuracy",
    } <= tags
    assert [e.value for e in ea.Scalars("val/macro_f1")] == pytest.approx([r["val_macro_f1"] for r in rows])
    assert "val/confusion_matrix" in ea.Tags()["images"]
    for name in ("learning_curve.png", "confusion_matrix.png"):
        assert_figure(run / name)
    assert json.loads((run / "val_metrics.json").read_text())["macro_f1"] == pytest.approx(
        max(r["val_macro_f1"] for r in rows)
    )


def test_eval_every_skips_evaluation_but_never_the_last_epoch(shards, tmp_path):
    """--eval-every 2 over 3 epochs: val figures for epochs 2 and 3 only; model.pt is the better of
    those two, and evaluating it gives its row's figures."""
    run = tmp_path / "run"
    res = run_cli(
        "train", *train_cmd(shards, run, "--batch-size", "16", "--epochs", "3", "--eval-every", "2")[2:]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = history(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [any(k.startswith("val_") for k in r) for r in rows] == [False, True, True]
    assert_model_pt_is_the_best_epoch(run, shards)
    line = next(line for line in res.stdout.splitlines() if line.startswith("epoch 1/3: "))
    assert "val_" not in line and "img/s" in line, line
    assert_figure(run / "learning_curve.png")


def test_gpu_decode_is_refused_on_cpu_processes(shards, tmp_path):
    run = tmp_path / "run"
    res = run_cli("train", *train_cmd(shards, run, "--gpu-decode")[2:], timeout=300)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "--gpu-decode decodes on CUDA devices; these processes use cpu" in res.stderr
    assert not (run / "config.json").exists() and not (run / "state").exists()


# The exact-resume recipe: 1 process, the tiny model, 2 epochs of 7 steps; --check-every 1 so a
# stop lands on the step under way. --save-every and --keep-last change between segments: they
# are free flags (artclf/train/runconfig.py).
EXACT = ("--batch-size", "16", "--epochs", "2", "--check-every", "1", "--record-batches", "--keep-last", "2")


def _uninterrupted(shards: Path, run: Path, workers: str) -> None:
    res = run_cli("train", *train_cmd(shards, run, *EXACT)[2:], "--workers", workers, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_any_interruption_resumes_to_the_same_weights_bitwise(shards, tmp_path):
    """One run stopped four ways, each time rerun by the same command, ends with the weights,
    global batches, history and TensorBoard curves of the run never stopped; that one equals a
    second uninterrupted run with another number of workers. The stops: SIGKILL after the first
    step's checkpoint; SIGTERM to the process group mid-epoch (saved at the epoch's last step);
    SIGUSR1 while it evaluates; SIGKILL after a --save-every checkpoint in epoch 2."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ref, run = tmp_path / "ref", tmp_path / "run"
    _uninterrupted(shards, ref, workers="1")
    _uninterrupted(shards, tmp_path / "ref2", workers="2")
    assert weights_digest(tmp_path / "ref2") == weights_digest(ref)
    steps = read_info(str(shards))["splits"]["train"]["num_samples"] // 16  # per epoch, 1 process
    assert steps == 7  # the kill points below are placed for 7
    cmd = [sys.executable, *train_cmd(shards, run, *EXACT)]

    def stop(save_every: str, when, sig: int, what: str) -> tuple[int | None, str]:
        with procs.running([*cmd, "--save-every", save_every]) as proc:
            # 20 ms: the evaluation a signal must land in lasts about a second here
            procs.wait_for(lambda: when(proc), 300, what, proc, every=0.02)
            os.killpg(proc.pid, sig)
            code = proc.wait(timeout=120)
            return code, procs.output(proc)

    saved = lambda step: lambda _proc: step in steps_saved(run)  # noqa: E731
    code, _ = stop("1", saved(1), signal.SIGKILL, "the first step's checkpoint")
    assert code == -signal.SIGKILL and steps_saved(run)[-1] in (1, 2)
    first = steps_saved(run)[-1]
    code, out = stop("3", saved(6), signal.SIGTERM, "step 6's checkpoint")
    assert code == EXIT_PREEMPTED, out[-3000:]
    assert f"resuming from {run / 'state'}/step-{first:08d}" in out
    assert f"preempted at step {steps} (epoch 1)" in out  # the stop seen at the next step, the last
    # resumed at the epoch's last step it goes straight to evaluation: USR1 lands there
    started = lambda proc: "artclf train: 1 process(es)" in procs.output(proc)  # noqa: E731
    code, out = stop("3", started, signal.SIGUSR1, "the start-up line")
    assert code == EXIT_PREEMPTED, out[-3000:]
    assert f"preempted at step {steps} (epoch 1)" in out and "epoch 1/2:" not in out, out[-3000:]
    code, _ = stop("3", saved(9), signal.SIGKILL, "step 9's checkpoint")
    assert code == -signal.SIGKILL
    res = run_cli("train", *cmd[3:], "--save-every", "3", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        f"resuming from {run / 'state'}/step-{steps_saved(run)[-2]:08d}" in res.stdout
        or "resuming" in res.stdout
    )

    assert weights_digest(run) == weights_digest(ref)
    assert (run / "batches.jsonl").read_text() == (ref / "batches.jsonl").read_text()
    assert steps_saved(run)[-1] == 2 * steps and len(steps_saved(run)) <= 2  # --keep-last
    rows, ref_rows = history(run), history(ref)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, steps), (2, 2 * steps)]
    for row, want in zip(rows, ref_rows, strict=True):  # the whole epoch, not its resumed tail
        for k in ("train_loss", "train_ce", "train_soft_f1"):
            assert row[k] == pytest.approx(want[k], rel=1e-5), (k, row, want)
        assert {k: v for k, v in row.items() if k.startswith("val_")} == {
            k: v for k, v in want.items() if k.startswith("val_")
        }
    assert_model_pt_is_the_best_epoch(run, shards)
    curves = []
    for r in (run, ref):
        events = EventAccumulator(str(r / "tb"), purge_orphaned_data=True)
        events.Reload()
        curves.append(
            {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("train/loss", "val/macro_f1")}
        )
    assert curves[0] == curves[1]  # one point per step: what the killed segments logged is purged

    # a rerun of the finished reference with another recipe (the mistake the issue tells of) is
    # refused by name, nothing written; with --resume-with-changes it goes on and is recorded
    before = (ref / "config.json").read_text()
    again = [*train_cmd(shards, ref, *EXACT)[2:], "--workers", "1"]
    res = run_cli("train", *again, "--lr", "1e-3", "--arch", "resnet34", timeout=300)
    assert res.returncode == 1, res.stdout[-2000:]
    assert "--arch: 'resnet18' in the run, 'resnet34' now" in res.stderr and "--lr: 0.0003" in res.stderr
    assert "does not load" not in res.stdout + res.stderr and (ref / "config.json").read_text() == before
    res = run_cli("train", *again, "--epochs", "3", "--resume-with-changes", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((ref / "config.json").read_text())
    assert record["config"]["epochs"] == 2 and record["changes"] == [
        {"step": 2 * steps, "flags": {"epochs": [2, 3]}}
    ]
    assert [r["epoch"] for r in history(ref)] == [1, 2, 3]


def test_weights_missing_local_and_malicious(shards, tmp_path):
    # the default recipe (resnet50, IMAGENET1K_V2) with an empty cache and no internet
    res = run_cli(
        "train", "--shards", shards, "--run", tmp_path / "r", env={"TORCH_HOME": str(tmp_path / "th")}
    )
    assert res.returncode == 1
    assert str(tmp_path / "th/hub/checkpoints/resnet50-11ad3fa6.pth") in res.stderr
    assert "artclf weights fetch" in res.stderr and "--weights PATH" in res.stderr
    import torchvision

    local = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), local)
    from artclf.weights import build

    assert build("resnet18", str(local), num_classes=5).fc.out_features == 5

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"format": "artclf-model-1", "x": Evil()}))
    with pytest.raises(ArtclfError, match="not a loadable artclf model"):
        load_model(bad)
    # --weights FILE with code in it: refused without torch's advice to load it unsafely
    with pytest.raises(ArtclfError, match="not a loadable weights file") as refused:
        build("resnet18", str(bad), num_classes=5)
    assert "weights_only" not in str(refused.value) and "torch.save(model.state_dict()" in str(refused.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "choice, per_device, world, device, on",
    [
        ("auto", 4, 16, "cuda", True),  # README topology: global batch 64 on 2 nodes x 8 GPUs
        ("auto", 2, 32, "cuda", True),  # k8s prod: 4 x 8 GPUs
        ("auto", 16, 4, "cuda", False),
        ("auto", 8, 1, "cuda", False),  # one process: nothing to synchronise
        ("off", 4, 16, "cuda", False),
        ("on", 32, 2, "cuda", True),
        ("auto", 8, 2, "cpu", False),  # SyncBatchNorm refuses CPU tensors
    ],
)
def test_sync_bn_is_on_below_16_images_per_gpu(choice, per_device, world, device, on):
    from artclf.train.recipe import sync_bn_choice

    decided, why = sync_bn_choice(choice, per_device, world, device)
    assert decided is on and why
    if on and choice == "auto":
        assert f"{per_device} images per device < 16" in why


def test_sync_bn_on_refuses_cpu_processes():
    from artclf.train.recipe import sync_bn_choice

    with pytest.raises(ArtclfError, match="GPUs only"):
        sync_bn_choice("on", 8, 2, "cpu")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_reject_rate_outside_0_1_is_refused(rate):
    """The check sat after a `return` (in the `stall` property) and never ran."""
    from artclf.train.config import TrainConfig

    with pytest.raises(ValueError, match=r"--reject-rate must be in \[0, 1\)"):
        TrainConfig(shards="s", run=Path("r"), reject_rate=rate)
    assert TrainConfig(shards="s", run=Path("r"), reject_rate=0.0).reject_rate == 0.0


def test_model_pt_of_a_compiled_model_loads_into_a_plain_one(tmp_path):
    from artclf.model import build_model, save_model
    from artclf.transforms import Preprocess

    pre = Preprocess(image_size=32, resize=32)
    plain = build_model("resnet18", "none", 5, pre)
    save_model(tmp_path / "model.pt", torch.compile(plain), [f"c{i}" for i in range(5)], pre, "resnet18", {})
    loaded, _ = load_model(tmp_path / "model.pt")
    for k, v in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_stop_during_evaluation_returns_no_metrics(shards):
    """The stop flag is checked per evaluation batch: the trainer saves instead of scoring."""
    from accelerate import Accelerator

    from artclf.data import read_info
    from artclf.metrics.eval_loop import evaluate
    from artclf.model import build_model
    from artclf.transforms import Preprocess

    info, pre = read_info(str(shards)), Preprocess(image_size=32, resize=32)
    model = build_model("resnet18", "none", len(info["classes"]), pre)
    batches = eval_loader(info, "val", pre, 4, 0, 0, 1)
    calls = []
    stop = lambda: calls.append(1) or len(calls) > 2  # noqa: E731  (stop at the third batch)
    metrics, preds = evaluate(Accelerator(cpu=True), model, batches, info["classes"], 0, stop)
    assert metrics is None and preds is None and len(calls) == 3


def test_default_workers_fit_this_machine_and_the_banner_says_why(shards, tmp_path):
    """No --workers: auto, from this process's CPUs (the box's affinity, 1 process); PyTorch's
    "suggested max number of worker" warning never fires; config.json keeps "auto" as asked and
    records the count; the banner names the mixed-precision mode as such."""
    import os

    run = tmp_path / "run"
    cmd = train_cmd(shards, run, "--batch-size", "16", "--epochs", "1")[2:]
    i = cmd.index("--workers")
    del cmd[i : i + 2]
    res = run_cli("train", *cmd, env={"LOCAL_WORLD_SIZE": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    cpus = len(os.sched_getaffinity(0))
    n = max(1, min(8, cpus))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["workers"] == "auto" and cfg["derived"]["workers"] == n
    word = "worker" if n == 1 else "workers"
    cpu = "CPU" if cpus == 1 else "CPUs"
    assert f"input: {n} {word} per process (auto: {cpus} {cpu} / 1 process on this node, cap 8)" in res.stdout
    assert "on cpu, mixed precision: no," in res.stdout, res.stdout[:600]
    assert "suggested max number of worker" not in res.stderr, res.stderr[-3000:]
