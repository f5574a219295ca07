"""Shared fixtures and the suite's own checks (docs/testing.md).

Fixtures: the data the project makes itself (no Kaggle download here), built once per session
and read-only for the tests: ``sample_dir`` -> ``work`` (ingested, hash-deduplicated, split) ->
``shards`` -> ``trained_run`` (2-process DDP training); and an untrained ``model_pt`` with its
``images`` for predict/export/serve. A test that needs to change one of them copies it first;
the session ends with an error when one was changed.

Checks at the end of the session:
- no process the suite started is still alive (every process inherits SESSION_MARK);
- with ``ARTCLF_REQUIRE_SYSTEM=1`` (CI), a skipped test fails the run: CI never passes
  without running every part.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from artclf.transforms import Preprocess
from tests.support import procs
from tests.support.procs import REPO
from tests.support.system import REQUIRE

# Every process the session starts carries this in its environment (see pytest_sessionfinish).
os.environ[procs.SESSION_MARK] = uuid.uuid4().hex
# The trainer's node-local copies of S3 shards (artclf/train/shardcache.py) go to the session's
# own folder, never to a shared $TMPDIR/artclf-shards; tests that need their own set it.
os.environ["ARTCLF_CACHE"] = tempfile.mkdtemp(prefix="artclf-cache-")

# Class list and preprocessing of the untrained ``model_pt`` (predict, export and serve tests).
CLASSES = ["Albrecht_Durer", "Claude_Monet", "Edgar_Degas", "Pablo_Picasso", "Paul_Klee", "Titian"]
TINY_PRE = Preprocess(image_size=48, resize=56)
# The tiny trainer recipe of the tests: a small arch, no weights, 48 px, few steps.
TINY = ["--arch", "resnet18", "--weights", "none", "--image-size", "48", "--workers", "1", "--log-every", "1"]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``python -m artclf <args>`` in a subprocess; returns CompletedProcess (text).
    ``subprocess.run`` kills the child when it times out; artclf stages that start processes of
    their own end them themselves."""
    return subprocess.run(
        [sys.executable, "-m", "artclf", *map(str, args)],
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_cmd(shards_dir: Path, run: Path, *extra: str) -> list[str]:
    """``-m artclf.train`` with the tiny recipe, for ``accelerate launch`` or ``python``."""
    return ["-m", "artclf.train", "--shards", str(shards_dir), "--run", str(run), *TINY, *extra]


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def steps_saved(run: Path) -> list[int]:
    """Optimizer steps of the checkpoints in RUN/state, oldest first."""
    from artclf.train.checkpoint import checkpoints

    return [int(c.name[5:]) for c in checkpoints(run / "state")]


def weights_digest(run: Path) -> dict[str, str]:
    """tensor name -> sha256 of its bytes, for the model of the newest checkpoint in RUN/state
    (what "bitwise the same weights" means)."""
    from safetensors.torch import load_file

    from artclf.train.checkpoint import latest

    tensors = load_file(str(latest(run / "state") / "model.safetensors"))
    return {
        k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in sorted(tensors.items())
    }


def expected_batches(shards: Path, batch: int, epochs: int, seed: int = 0) -> list[dict]:
    """``batches.jsonl`` of a run never stopped, derived here without training: one process
    reads each epoch's global batches with the train loader and digests them as the trainer
    documents (sha256 of the JSON list of [key, augmentation seed] pairs, in order)."""
    from artclf.data import read_info, train_index
    from artclf.train.order import Order
    from artclf.train.stream import train_loader

    info = read_info(str(shards))
    index = train_index(info, str(shards))
    order = Order(len(index), batch, seed)
    rows = []
    for epoch in range(epochs):
        for b in train_loader(index, order, epoch, 0, Preprocess(image_size=16, resize=16), 0):
            pairs = [[k, a] for k, a in zip(b.keys, b.aug, strict=True)]
            digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
            rows.append({"step": len(rows) + 1, "epoch": epoch + 1, "samples": len(pairs), "sha256": digest})
    return rows


def plain_predictions(model_path: Path, shards: Path, split: str = "val", calibrated: bool = False) -> tuple:
    """(labels, probabilities, classes) of ``model_path`` on ``split``: one process, a plain loop,
    no Accelerate; the reference the trainer's and evaluator's figures are checked against.
    Uncalibrated by default, as the trainer's val figures are (it fits T afterwards);
    ``calibrated`` for what ``artclf evaluate`` scores."""
    from artclf.data import eval_loader, read_info
    from artclf.model import load_model

    model, blob = load_model(model_path, calibrated=calibrated)
    pre = Preprocess.from_dict(blob["preprocess"])
    ys, ps = [], []
    with torch.inference_mode():
        for batch in eval_loader(read_info(str(shards)), split, pre, 8, 0, 0, 1):
            if batch.keys:
                ps.append(torch.softmax(model(batch.images).float(), dim=1).numpy())
                ys.append(batch.labels.numpy())
    return np.concatenate(ys), np.concatenate(ps), blob["classes"]


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (what "unchanged" means)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tree_stat(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime in ns) of every file under ``root``: any write changes one."""
    return {
        p.relative_to(root).as_posix(): (st.st_size, st.st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (st := p.stat())
    }


def read_only(root: Path, value: object = None):
    """Yield ``value`` (default ``root``); at teardown, fail if any test changed, added or
    removed a file under ``root``."""
    before = tree_stat(root)
    yield root if value is None else value
    after = tree_stat(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared fixture {root} (copy it first): {changed[:10]}"


def assert_figure(path: Path, min_colours: int = 16) -> None:
    """A PNG that shows something: decodes, and is not one flat colour with a few stray pixels
    (a figure whose plotting failed is a white page with at most an empty frame)."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", path
        a = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(a, axis=0, return_counts=True)
    assert len(colours) >= min_colours, f"{path}: {len(colours)} colours"
    assert counts.max() / len(a) < 0.97, f"{path}: {counts.max() / len(a):.1%} of it is one colour"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A small sample data set with every quirk."""
    from artclf.sample_data import SampleDataConfig, generate

    out = tmp_path_factory.mktemp("sample") / "data"
    generate(SampleDataConfig(out=out, scale=0.02, seed=7, max_side=128))
    yield from read_only(out)


@pytest.fixture(scope="session")
def work(sample_dir, tmp_path_factory):
    """``sample_dir`` ingested, deduplicated with hashes only (no CNN), split."""
    from artclf.dedup import DedupConfig, dedup
    from artclf.ingest import IngestConfig, ingest
    from artclf.split import SplitConfig, split

    w = tmp_path_factory.mktemp("work")
    ingest(IngestConfig(data_dir=sample_dir, work=w, workers=1))
    dedup(DedupConfig(work=w, weights="none", workers=0, montages=0))
    split(SplitConfig(work=w))
    yield from read_only(w)


@pytest.fixture(scope="session")
def shards(work, tmp_path_factory):
    """``work`` packed at store size 96, 16 samples a shard."""
    from artclf.shard import ShardConfig, shard

    out = tmp_path_factory.mktemp("shards")
    shard(ShardConfig(work=work, out=str(out), store_size=96, shard_samples=16, workers=2))
    yield from read_only(out)


@pytest.fixture(scope="session")
def trained_run(shards, tmp_path_factory):
    """The tiny recipe trained for 6 epochs by 2 real DDP processes (gloo): model.pt, history,
    TensorBoard, plots. Evaluate and train tests read it; none writes into it. (6 epochs: enough
    to be far above the majority-class baseline on train and val; 3 were not, on 125 images.)"""
    from tests.support.cpu_launch import launch

    run = tmp_path_factory.mktemp("trained") / "run"
    code, out = launch(
        2, *train_cmd(shards, run, "--batch-size", "16", "--epochs", "6", "--lr", "2e-3"), timeout=900
    )
    assert code == 0, out[-4000:]
    (run.parent / "train.log").write_text(out)
    yield from read_only(run)


def tiny_model(path: Path) -> Path:
    """An untrained resnet18 saved as model.pt (predict and export need no trained weights)."""
    from artclf.model import build_model, save_model

    torch.manual_seed(0)
    model = build_model("resnet18", "none", len(CLASSES), TINY_PRE)
    save_model(path, model, CLASSES, TINY_PRE, "resnet18", {})
    return path


def half_black(w: int = 80, h: int = 60):
    """Upright test picture: left half black, right half a colour gradient (rotations differ)."""
    from PIL import Image

    a = np.zeros((h, w, 3), np.uint8)
    a[:, w // 2 :, 0] = np.linspace(60, 255, w - w // 2, dtype=np.uint8)
    a[:, w // 2 :, 1] = 200
    return Image.fromarray(a)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Inputs for predict/export/serve: PNG with alpha, grayscale, CMYK, EXIF-rotated, broken."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    (d / "sub").mkdir()
    pic = half_black()
    pic.save(d / "upright.jpg", quality=95)
    pic.convert("RGBA").save(d / "sub" / "alpha.png")
    pic.convert("L").save(d / "sub" / "gray.jpg", quality=95)
    pic.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels must be turned 90° clockwise to stand up
    pic.transpose(Image.Transpose.ROTATE_90).save(d / "exif_rotated.jpg", quality=95, exif=exif)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (d / "notes.txt").write_text("not an image suffix: skipped silently in a folder")
    yield from read_only(d)


@pytest.fixture(scope="session")
def model_pt(tmp_path_factory):
    path = tiny_model(tmp_path_factory.mktemp("model") / "model.pt")
    yield from read_only(path.parent, path)


@pytest.fixture
def s3_env(s3_server, monkeypatch):  # noqa: F811  (the session fixture imported below)
    """boto3's environment pointed at the test server, restored (with the endpoint) afterwards."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    yield s3_server
    from artclf import storage

    storage.set_endpoint(None)


@pytest.fixture
def s3_prefix(s3_env) -> str:
    """A fresh ``s3://bucket/<random>`` prefix per test."""
    return f"s3://{s3_env.bucket}/{uuid.uuid4().hex[:10]}"


def pytest_sessionfinish(session, exitstatus):
    """The suite's own checks, after every fixture has been torn down."""
    import shutil

    shutil.rmtree(os.environ["ARTCLF_CACHE"], ignore_errors=True)
    say = _terminal(session.config)
    mark = os.environ[procs.SESSION_MARK]
    left = procs.marked(mark)
    deadline = time.monotonic() + 10  # a process ending right now gets a moment
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = procs.marked(mark)
    if left:
        for pid in left:
            procs.kill_tree(pid)
        say(f"FAILED: {len(left)} process(es) the tests started outlived the session (now killed):")
        for pid, cmd in sorted(left.items()):
            say(f"  pid {pid}: {cmd[:300]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.getplugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get(REQUIRE) == "1" and skipped:
        say(f"FAILED: {REQUIRE}=1 and {len(skipped)} test(s) were skipped:")
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr
            say(f"  {rep.nodeid}: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _terminal(config):
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return print

    def say(line: str) -> None:
        if line.startswith("FAILED"):
            reporter.write("\n")  # off the progress line
        reporter.write_line(line, red=line.startswith("FAILED"))

    return say


from tests.support.s3server import s3_server  # noqa: E402, F401  (session fixture: a real S3 server)
from tests.support.slurmcluster import slurm, slurm2  # noqa: E402, F401  (session fixtures: real local SLURMs)
