"""A train that fails before its first step leaves no run folder behind that it created (a path
typo, a batch that does not divide), a folder that was there before exactly as it was, and under
a launch script only the record that explains the failure (``train/outcome.py``)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, train_cmd, tree_digest


def _train(shards, run, *extra, env=None):
    res = run_cli("train", *train_cmd(shards, run, "--epochs", "1", *extra)[2:], env=env, timeout=300)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    return res


@pytest.mark.parametrize(
    ("what", "flags", "says"),
    [
        ("batch", ["--batch-size", "15", "--grad-accum", "2"], "--batch-size 15 is the global batch"),
        ("shards", [], "_info.json"),
    ],
)
def test_a_failed_start_removes_the_run_folder_it_created(shards, tmp_path, what, flags, says):
    run = tmp_path / "runs" / "first"
    res = _train(tmp_path / "no-such-shards" if what == "shards" else shards, run, *flags)
    assert says in res.stderr, res.stderr[-2000:]
    assert not run.exists(), sorted(p.name for p in run.rglob("*"))
    assert (tmp_path / "runs").is_dir()  # only the folder it would have trained into goes


def test_a_failed_start_leaves_an_existing_run_folder_as_it_was(shards, tmp_path):
    run = tmp_path / "run"
    (run / "state" / "step-7").mkdir(parents=True)
    (run / "state" / "step-7" / "model.safetensors").write_bytes(b"weights")
    (run / "config.json").write_text(json.dumps({"config": {"epochs": 1}}))
    before = tree_digest(run)
    _train(shards, run, "--batch-size", "15", "--grad-accum", "2")
    assert tree_digest(run) == before  # and no .lock the failed attempt created


def test_under_a_launch_script_only_the_explaining_record_is_left(shards, tmp_path):
    run = tmp_path / "run"
    _train(shards, run, "--batch-size", "15", "--grad-accum", "2", env={"ARTCLF_LAUNCH_ID": "L1"})
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == [
        "exits/L1/rank-0-78.json"
    ]
    assert "--batch-size 15" in json.loads((run / "exits/L1/rank-0-78.json").read_text())["reason"]
