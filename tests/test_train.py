"""The trainer on CPU: real 2-process DDP (gloo), exact evaluation 1 vs 2 processes, kill -9 and
SIGTERM then resume, TensorBoard on the main process only, weights rules."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from artclf.checkpoint import checkpoints
from artclf.errors import ArtclfError
from artclf.model import load_model
from artclf.preemption import EXIT_PREEMPTED
from tests.conftest import REPO, run_cli
from tests.test_data import accelerate_cpu
from tests.test_shard import shards, work  # noqa: F401  (module fixtures)

TINY = ["--arch", "resnet18", "--weights", "none", "--image-size", "48", "--workers", "1", "--log-every", "1"]


def train_cmd(shards_dir: Path, run: Path, *extra: str) -> list[str]:
    return ["-m", "artclf.train", "--shards", str(shards_dir), "--run", str(run), *TINY, *extra]


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("ddp") / "run"
    res = accelerate_cpu(2, *train_cmd(shards, run, "--batch-size", "16", "--epochs", "3", "--lr", "2e-3"))
    assert res.returncode == 0, res.stderr[-4000:]
    return run, res


@pytest.mark.slow
def test_two_process_training_learns_and_logs_once(ddp_run):
    run, res = ddp_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["derived"]["world_size"] == 2 and cfg["derived"]["per_device_batch"] == 8
    rows = history(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    chance = 1 / 50
    assert max(r["val_accuracy"] for r in rows) > 2 * chance
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
        "val/macro_f1",
        "val/accuracy",
    } <= tags
    assert len(ea.Scalars("val/macro_f1")) == 3
    assert "val/confusion_matrix" in ea.Tags()["images"]
    for name in ("model.pt", "learning_curve.png", "confusion_matrix.png", "val_metrics.json"):
        assert (run / name).is_file()


@pytest.mark.slow
def test_evaluation_is_identical_with_one_and_two_processes(ddp_run, shards, tmp_path):  # noqa: F811
    run, _ = ddp_run
    outs = []
    for n in (1, 2):
        out = tmp_path / f"eval{n}.json"
        res = accelerate_cpu(n, "tests/dist_eval.py", str(run / "model.pt"), str(shards), "val", str(out))
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(json.loads(out.read_text()))
    one, two = outs
    assert (one["world"], two["world"]) == (1, 2)
    assert sorted(one["keys"]) == sorted(two["keys"]) and len(set(two["keys"])) == len(two["keys"])
    for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "confidence", "log_loss"):
        assert one[k] == pytest.approx(two[k], abs=1e-6), k
    assert one["confusion_matrix"] == two["confusion_matrix"]


def test_kill_9_mid_epoch_then_rerun_resumes(shards, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    cmd = [sys.executable, *train_cmd(shards, run, "--batch-size", "4", "--epochs", "2", "--save-every", "2")]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not [c for c in checkpoints(run / "state") if int(c.name[5:]) >= 4]:
        assert proc.poll() is None and time.time() < deadline, "trainer ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = int(checkpoints(run / "state")[-1].name[5:])
    res = run_cli("train", *cmd[3:], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {run / 'state'}/step-{saved:08d}" in res.stdout
    assert [r["epoch"] for r in history(run)] == [1, 2]  # each epoch exactly once


def test_sigterm_saves_within_the_step_and_exits_75(shards, tmp_path):  # noqa: F811
    """SIGTERM to the whole process group, DataLoader workers included, as torchrun, Kubernetes
    and SLURM send it."""
    run = tmp_path / "run"
    cmd = [sys.executable, *train_cmd(shards, run, "--batch-size", "4", "--epochs", "2")]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while not (run / "tb").is_dir() or not list((run / "tb").glob("events*")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(3)  # well inside the first epoch
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out[-3000:]
    assert "preempted at step" in out
    saved = checkpoints(run / "state")
    assert saved, "no state saved"
    step = int(saved[-1].name[5:])
    assert f"preempted at step {step} " in out
    res = run_cli("train", *cmd[3:], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"step-{step:08d}" in res.stdout and [r["epoch"] for r in history(run)] == [1, 2]


def test_weights_missing_local_and_malicious(shards, tmp_path):  # noqa: F811
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
    from artclf.train import sync_bn_choice

    decided, why = sync_bn_choice(choice, per_device, world, device)
    assert decided is on and why
    if on and choice == "auto":
        assert f"{per_device} images per device < 16" in why


def test_sync_bn_on_refuses_cpu_processes():
    from artclf.train import sync_bn_choice

    with pytest.raises(ArtclfError, match="GPUs only"):
        sync_bn_choice("on", 8, 2, "cpu")


def test_model_pt_of_a_compiled_model_loads_into_a_plain_one(tmp_path):
    from artclf.model import build_model, save_model
    from artclf.transforms import Preprocess

    pre = Preprocess(image_size=32, resize=32)
    plain = build_model("resnet18", "none", 5, pre)
    save_model(tmp_path / "model.pt", torch.compile(plain), [f"c{i}" for i in range(5)], pre, "resnet18", {})
    loaded, _ = load_model(tmp_path / "model.pt")
    for k, v in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_stop_during_evaluation_returns_no_metrics(shards):  # noqa: F811
    """The stop flag is checked per evaluation batch: the trainer saves instead of scoring."""
    from accelerate import Accelerator

    from artclf.data import eval_loader, read_info
    from artclf.engine import evaluate
    from artclf.model import build_model
    from artclf.transforms import Preprocess

    info, pre = read_info(str(shards)), Preprocess(image_size=32, resize=32)
    model = build_model("resnet18", "none", len(info["classes"]), pre)
    batches = eval_loader(info, "val", pre, 4, 0, 0, 1)
    calls = []
    stop = lambda: calls.append(1) or len(calls) > 2  # noqa: E731  (stop at the third batch)
    metrics, preds = evaluate(Accelerator(cpu=True), model, batches, info["classes"], 0, stop)
    assert metrics is None and preds is None and len(calls) == 3
