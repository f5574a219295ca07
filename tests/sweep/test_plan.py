"""sweep plan: grid × seeds against itertools.product, names, args files through the trainer's own
parser, the errors a sweep file can hold, a rerun that changes nothing, and the trainer's run lock
never taking back a folder the plan made."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from artclf.config import parse
from artclf.errors import ArtclfError
from artclf.sweep import plan as plan_mod
from artclf.sweep.plan import PlanConfig, plan
from artclf.train.config import TrainConfig
from artclf.train.runlock import RunLock
from tests.conftest import tree_stat

SWEEP = """
[base]
arch = "resnet18"
image-size = 48
epochs = 3
compile = false
[grid]
lr = [1e-4, 3e-4, 1e-3]
ce_weight = [0.3, 0.5]
seeds = [0, 1, 2]
"""


def write(tmp_path, text: str, name: str = "sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def args_of(folder) -> list[str]:
    return folder.joinpath("args").read_text().splitlines()


def test_grid_times_seeds_is_every_combination_config_major(tmp_path, capsys):
    runs = tmp_path / "runs"
    sweep = plan(PlanConfig(file=write(tmp_path, SWEEP), runs=runs))
    expected = list(itertools.product([1e-4, 3e-4, 1e-3], [0.3, 0.5], [0, 1, 2]))
    points = sweep["points"]
    assert [(p["flags"]["lr"], p["flags"]["ce_weight"], p["seed"]) for p in points] == expected
    assert [p["index"] for p in points] == list(range(len(expected)))
    names = [p["name"] for p in points]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[A-Za-z0-9._+-]+", n) for n in names)
    assert names[0] == "lr-0.0001_ce-weight-0.3_seed-0"
    for p in points:
        assert p["name"] == f"{p['config']}_seed-{p['seed']}"
        folder = runs / p["name"]
        assert json.loads((folder / "sweep.json").read_text()) == p
        args = args_of(folder)
        assert "--run" not in args and "--shards" not in args  # the launcher passes both
        cfg = parse(TrainConfig, [*args, "--run", str(folder), "--shards", "S"], "artclf train")
        for key, value in {"arch": "resnet18", "image_size": 48, "epochs": 3, "compile": False}.items():
            assert getattr(cfg, key) == value
        assert (cfg.lr, cfg.ce_weight, cfg.seed) == (p["flags"]["lr"], p["flags"]["ce_weight"], p["seed"])
    assert (runs / "points.txt").read_text().splitlines() == names
    on_disk = json.loads((runs / "sweep.json").read_text())
    assert on_disk["points"] == points and on_disk["seeds"] == [0, 1, 2]
    assert on_disk["grid"] == {"lr": [1e-4, 3e-4, 1e-3], "ce_weight": [0.3, 0.5]}
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == [f"{i} {n}" for i, n in enumerate(names)]
    assert out[-1] == f"18 runs in {runs}: sbatch --array=0-17 slurm/sweep.sbatch (RUNS={runs})"


def test_a_list_of_tables_is_one_axis_and_base_shards_reach_the_args(tmp_path):
    text = """
seeds = [4]
[base]
shards = "s3://bucket/shards"
[grid]
lr = [1e-3]
[[grid.loss]]
ce_weight = 0.3
f1_weight = 0.7
[[grid.loss]]
ce_weight = 1.0
f1_weight = 0.0
"""
    sweep = plan(PlanConfig(file=write(tmp_path, text), runs=tmp_path / "runs"))
    assert [p["name"] for p in sweep["points"]] == [
        "lr-0.001_ce-weight-0.3_f1-weight-0.7_seed-4",
        "lr-0.001_ce-weight-1.0_f1-weight-0.0_seed-4",
    ]
    args = args_of(tmp_path / "runs" / sweep["points"][1]["name"])
    cfg = parse(TrainConfig, [*args, "--run", "R"], "artclf train")  # --shards from the file
    assert (cfg.shards, cfg.ce_weight, cfg.f1_weight, cfg.seed) == ("s3://bucket/shards", 1.0, 0.0, 4)


BAD = {
    "unknown top-level key": ("epochs = 3\n[grid]\nlr = [1e-3]\n", "epochs"),
    "grid key not a flag": ("[grid]\nlearning_rate = [1e-3]\n", "learning_rate"),
    "run in base": ('[base]\nrun = "x"\n', "run"),
    "run in grid": ('[grid]\nrun = ["a", "b"]\n', "run"),
    "seed in base": ("[base]\nseed = 3\n", "seed"),
    "empty grid list": ("[grid]\nlr = []\n", "lr"),
    "duplicate values": ("[grid]\nlr = [1e-4, 0.0001]\n", "lr"),
    "duplicate seeds": ("seeds = [1, 1]\n", "seeds"),
    "a flag in base and grid": ("[base]\nlr = 1e-3\n[grid]\nlr = [1e-4]\n", "lr"),
    "a value the trainer refuses": ('[grid]\nlr = ["fast"]\n', "--lr"),
    "weights the trainer refuses": ("[base]\nce_weight = 0\nf1_weight = 0\n", "--ce-weight"),
    "tables that differ": ("[[grid.loss]]\nce_weight = 0.3\n[[grid.loss]]\nf1_weight = 0.3\n", "loss"),
    "seeds after a table": ("[[grid.loss]]\nce_weight = 0.3\nseeds = [0]\n", "seeds"),
    "not TOML": ("[grid\n", "cannot read"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_files_are_refused_naming_file_and_key(tmp_path, case):
    text, named = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ArtclfError) as e:
        plan(PlanConfig(file=path, runs=tmp_path / "runs"))
    assert str(path) in str(e.value) and named in str(e.value), str(e.value)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_rerun_is_a_no_op_and_another_sweep_needs_force(tmp_path, capsys):
    runs = tmp_path / "runs"
    cfg = PlanConfig(file=write(tmp_path, SWEEP), runs=runs)
    plan(cfg)
    first, before = capsys.readouterr().out, tree_stat(runs)
    plan(cfg)
    assert capsys.readouterr().out == first and tree_stat(runs) == before

    other = PlanConfig(
        file=write(tmp_path, SWEEP.replace("epochs = 3", "epochs = 4"), "other.toml"), runs=runs
    )
    with pytest.raises(ArtclfError, match="--force"):
        plan(other)
    assert tree_stat(runs) == before  # never two sweeps mixed
    # a point whose run already started with other flags is never replanned, even with --force
    started = runs / "lr-0.0001_ce-weight-0.3_seed-0"
    (started / "config.json").write_text("{}")
    with pytest.raises(ArtclfError, match="trained with other flags"):
        plan(PlanConfig(file=other.file, runs=runs, force=True))
    (started / "config.json").unlink()
    plan(PlanConfig(file=other.file, runs=runs, force=True))
    assert json.loads((runs / "sweep.json").read_text())["base"]["epochs"] == 4
    assert "--epochs\n4\n" in (started / "args").read_text()


def test_a_folder_that_is_no_point_is_not_taken(tmp_path):
    runs = tmp_path / "runs"
    (runs / "lr-0.0001_ce-weight-0.3_seed-0").mkdir(parents=True)
    (runs / "lr-0.0001_ce-weight-0.3_seed-0" / "model.pt").write_bytes(b"x")
    with pytest.raises(ArtclfError, match="no point of a sweep"):
        plan(PlanConfig(file=write(tmp_path, SWEEP), runs=runs))


def test_a_failed_trainer_start_keeps_the_folder_the_plan_made(tmp_path):
    """The trainer's run lock takes back only what its attempt made (artclf/train/runlock.py): a
    point's folder existed before, so a start that fails leaves sweep.json and args."""
    runs = tmp_path / "runs"
    plan(PlanConfig(file=write(tmp_path, SWEEP), runs=runs))
    folder = runs / "lr-0.0001_ce-weight-0.3_seed-0"
    lock = RunLock(folder)
    lock.discard_unused()  # what the trainer does after a failed start
    lock.release()
    assert sorted(p.name for p in folder.iterdir()) == ["args", "sweep.json"]


def test_the_stage_runs_from_the_cli(tmp_path, capsys):
    from artclf.cli import main

    assert main(["sweep", "plan", str(write(tmp_path, SWEEP)), "--runs", str(tmp_path / "r")]) == 0
    assert main(["sweep", "plan", str(tmp_path / "missing.toml"), "--runs", str(tmp_path / "r")]) == 1
    assert "missing.toml" in capsys.readouterr().err
    assert main(["sweep", "nonsense"]) == 2
    assert plan_mod.text(3e-5) == "3e-05" and plan_mod.tokens({"compile": False}) == ["--no-compile"]
