"""sweep summary: the choice on val (mean over seeds per config) against an independent
computation, ties to plan order, unfinished runs named with the command that reruns them,
--partial; and once end to end with a real ``artclf evaluate`` of the chosen run only."""

from __future__ import annotations

import json
import shutil
import statistics

import numpy as np
import pytest

from artclf.errors import ArtclfError
from artclf.metrics import bootstrap
from artclf.sweep.plan import PlanConfig, plan
from artclf.sweep.summary import choose, main, read_points, val_scores
from tests.sweep.test_compare import make_run

SWEEP = "[base]\nepochs = 3\n[grid]\nseeds = [0, 1]\nlr = [1e-3, 1e-2, 1e-1]\n"


@pytest.fixture
def sweep(tmp_path):
    """A planned 3 configs × 2 seeds sweep, every run trained (3 epochs) with random val scores."""
    (tmp_path / "sweep.toml").write_text(SWEEP)
    runs = tmp_path / "runs"
    points = plan(PlanConfig(file=tmp_path / "sweep.toml", runs=runs))["points"]
    rng = np.random.default_rng(3)
    for p in points:
        make_run(runs, p["name"], list(rng.uniform(0.2, 0.8, 3)), **p["flags"])
    return runs, points


def expected_choice(runs, points) -> tuple[str, dict]:
    """Mean over seeds of val_metrics.json's macro F1 per config; the best, first on a tie."""
    by: dict[str, list[float]] = {}
    for p in points:
        by.setdefault(p["config"], []).append(
            json.loads((runs / p["name"] / "val_metrics.json").read_text())["macro_f1"]
        )
    means = {c: statistics.mean(v) for c, v in by.items()}
    best = max(means.values())
    return next(c for c in means if means[c] == best), means


def choice_of(runs, points, partial=False) -> dict:
    return choose(points, val_scores(read_points(runs, points)), partial, runs)


def test_the_config_with_the_best_mean_val_is_chosen(sweep):
    runs, points = sweep
    chosen, means = expected_choice(runs, points)
    choice = choice_of(runs, points)
    assert choice["chosen"] == chosen and choice["val_means"] == pytest.approx(means, abs=1e-15)
    assert choice["runs"] == [f"{chosen}_seed-0", f"{chosen}_seed-1"] and not choice["incomplete"]


def test_a_tie_goes_to_the_config_first_in_the_plan(sweep):
    runs, points = sweep
    for p in points:  # every config's seeds: 0.7 and 0.5 in some order
        make_run(runs, p["name"], [0.7 if p["seed"] == (p["index"] // 2) % 2 else 0.5] * 3, **p["flags"])
    assert choice_of(runs, points)["chosen"] == points[0]["config"]


def test_unfinished_runs_are_named_with_how_to_rerun_them(sweep):
    runs, points = sweep
    make_run(runs, points[3]["name"], [0.99, 0.99, 0.99], done=2, **points[3]["flags"])  # stopped early
    for name in ("config.json", "history.jsonl", "val_metrics.json", "model.pt"):
        (runs / points[4]["name"] / name).unlink()  # never started
    with pytest.raises(ArtclfError) as e:
        choice_of(runs, points)
    assert "2 of 6 runs unfinished" in str(e.value) and points[3]["name"] in str(e.value)
    assert f"sbatch --array=3,4 slurm/sweep.sbatch (RUNS={runs})" in str(e.value)
    # --partial: only the config whose seeds all finished is left
    choice = choice_of(runs, points, partial=True)
    assert choice["chosen"] == points[0]["config"] and list(choice["val_means"]) == [points[0]["config"]]
    assert choice["incomplete"] == {
        points[2]["config"]: [points[3]["name"]],
        points[4]["config"]: [points[4]["name"]],
    }


def test_summary_of_an_unfinished_sweep_scores_nothing(sweep, capsys):
    runs, points = sweep
    make_run(runs, points[0]["name"], [0.5], done=1, **points[0]["flags"])
    assert main([str(runs)]) == 1
    assert "rerun only them: sbatch --array=0 " in capsys.readouterr().err
    assert not list(runs.rglob("eval-test")) and not (runs / "summary.json").exists()
    assert main([str(runs.parent / "nowhere")]) == 1
    assert "artclf sweep plan FILE --runs" in capsys.readouterr().err


@pytest.mark.slow
def test_summary_scores_the_chosen_config_and_nothing_else(trained_run, tmp_path, capsys):
    """Two points that hold copies of the session's trained run (6 epochs); the first copy's val
    is set lower, so the choice is the second config, whose run alone is scored on test."""
    (tmp_path / "sweep.toml").write_text("[base]\nepochs = 6\n[grid]\nlr = [1e-3, 2e-3]\n")
    runs = tmp_path / "runs"
    points = plan(PlanConfig(file=tmp_path / "sweep.toml", runs=runs))["points"]
    for p in points:
        for name in ("config.json", "history.jsonl", "val_metrics.json", "model.pt"):
            shutil.copy(trained_run / name, runs / p["name"] / name)
    val = json.loads((trained_run / "val_metrics.json").read_text())
    (runs / points[0]["name"] / "val_metrics.json").write_text(
        json.dumps({**val, "macro_f1": val["macro_f1"] - 0.1})
    )
    argv = [str(runs), "--batch-size", "8", "--workers", "0", "--resamples", "200"]
    assert main(argv) == 0
    chosen, other = runs / points[1]["name"], runs / points[0]["name"]
    assert (chosen / "eval-test" / "metrics.json").is_file() and not (other / "eval-test").exists()
    summary = json.loads((runs / "summary.json").read_text())
    assert summary["chosen"] == points[1]["config"] and summary["runs"] == [points[1]["name"]]
    assert summary["val_means"] == {
        points[0]["config"]: val["macro_f1"] - 0.1,
        points[1]["config"]: val["macro_f1"],
    }
    rows = {r["name"]: r for r in summary["table"]["runs"]}
    assert rows[points[0]["name"]]["test"] is None  # val only for the config not chosen
    metrics = json.loads((chosen / "eval-test" / "metrics.json").read_text())
    test = rows[points[1]["name"]]["test"]["macro_f1"]
    assert test["value"] == pytest.approx(metrics["macro_f1"], abs=1e-6)  # evaluate's own figure
    assert test["low"] <= test["value"] <= test["high"] and summary["table"]["resamples"] == 200
    out = capsys.readouterr().out
    assert f"chosen on val: {points[1]['config']}" in out and f"tensorboard --logdir {runs}" in out
    assert f"macro F1 {bootstrap.bracket(test)}" in out
    # a rerun resumes: the model.pt already scored is not scored again
    stamp = (chosen / "eval-test" / "metrics.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert "already scored this model.pt" in capsys.readouterr().out
    assert (chosen / "eval-test" / "metrics.json").stat().st_mtime_ns == stamp
    assert "## By config" in (runs / "summary.md").read_text()
