"""evaluate: metrics.json against scikit-learn on the saved predictions, its bootstrap intervals,
the files of the report, 1 process vs 2 processes (real gloo ranks) give the same metrics.json."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn import metrics as skm

from artclf import evaluate as evaluate_stage
from artclf.metrics import bootstrap
from tests.conftest import CLASSES, assert_figure, run_cli
from tests.support.cpu_launch import accelerate_cpu


def evaluate(shards, run, out, *extra):
    return run_cli(
        "evaluate", "--model", run / "model.pt", "--shards", shards, "--out", out, "--workers", "1", *extra
    )


@pytest.fixture(scope="module")
def evaluated(shards, trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "test"
    res = evaluate(shards, trained_run, out, "--batch-size", "8")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def ece_by_definition(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Guo et al. 2017, written out: 15 equal bins (lo, hi] of the top probability; per bin,
    |accuracy − mean confidence| weighted by its share of the samples."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i in range(len(y)) if lo < conf[i] <= hi]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            mean_conf = sum(conf[i] for i in inside) / len(inside)
            total += len(inside) / len(y) * abs(acc - mean_conf)
    return total


def read_predictions(out):
    with open(out / "predictions.csv") as f:
        return list(csv.DictReader(f))


def test_metrics_equal_scikit_learn_on_saved_predictions(shards, evaluated):
    out, _ = evaluated
    m = json.loads((out / "metrics.json").read_text())
    info = json.loads((shards / "_info.json").read_text())
    rows = read_predictions(out)
    probs = np.load(out / "probabilities.npy")
    y = np.array([int(r["label"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    C = len(info["classes"])
    assert m["split"] == "test" and m["n"] == len(rows) == info["splits"]["test"]["num_samples"]
    assert len({r["key"] for r in rows}) == len(rows)
    assert (probs.argmax(1) == pred).all()
    labels = list(range(C))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg_key, fn in (
        ("macro_f1", skm.f1_score),
        ("macro_precision", skm.precision_score),
        ("macro_recall", skm.recall_score),
    ):
        ref = fn(y, pred, labels=labels, average="macro", zero_division=0)
        assert m[avg_key] == pytest.approx(ref, abs=1e-9), avg_key
    assert m["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=5, labels=labels))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=labels), rel=1e-4)
    assert m["confidence"] == pytest.approx(probs.max(1).mean(), rel=1e-5)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert m["ece"] == pytest.approx(ece_by_definition(probs, y), abs=1e-6)
    with open(out / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [r["class"] for r in per_class] == info["classes"]
    f1 = skm.f1_score(y, pred, labels=labels, average=None, zero_division=0)
    assert [float(r["f1"]) for r in per_class] == pytest.approx(f1, abs=1e-4)


def test_report_and_plots(trained_run, evaluated):
    out, res = evaluated
    for name in ("confusion_matrix.png", "errors.png", "learning_curve.png"):
        assert_figure(out / name)
    report = (out / "report.md").read_text()
    m = json.loads((out / "metrics.json").read_text())
    assert f"| macro_f1 | {m['macro_f1']:.4f} |" in report
    for link in ("confusion_matrix.png", "errors.png", "learning_curve.png", "per_class.csv"):
        assert f"({link})" in report
    assert "| arch | `resnet18` |" in report  # the run's config, from RUN/config.json
    assert "## Calibration" in report and "## None of these artists" in report
    assert str(out / "report.md") in res.stdout
    # the effective values beside the flags: the peak lr scaled by the global batch, not --lr
    run_cfg = json.loads((trained_run / "config.json").read_text())
    flags, derived = run_cfg["config"], run_cfg["derived"]
    peak = flags["lr"] * flags["batch_size"] / 64
    assert peak != flags["lr"] and derived["peak_lr"] == pytest.approx(peak)
    assert f"| peak learning rate (effective) | `{peak:.3g}` |" in report, report
    world, per = derived["world_size"], derived["per_device_batch"]
    assert f"| global batch | `{flags['batch_size']}` = {per} per device × {world} processes" in report
    assert f"| DataLoader workers per process | `{derived['workers']}` |" in report
    assert f"| lr | `{flags['lr']}` |" in report  # the flag as given, under its own heading


def test_intervals_in_metrics_report_and_console(evaluated):
    """metrics.json's intervals are bootstrap.intervals (itself checked against a loop in
    tests/metrics/test_bootstrap.py) of the saved predictions, with the defaults recorded; the
    report and the console show them beside the scores."""
    out, res = evaluated
    m = json.loads((out / "metrics.json").read_text())
    iv = m["intervals"]
    y = np.array([int(r["label"]) for r in read_predictions(out)])
    probs = np.load(out / "probabilities.npy")
    assert (iv["resamples"], iv["seed"], iv["confidence"], iv["unit"]) == (
        bootstrap.RESAMPLES, bootstrap.SEED, bootstrap.CONFIDENCE, "image"
    )  # fmt: skip
    assert iv == bootstrap.intervals(y, probs, resamples=iv["resamples"], seed=iv["seed"], confidence=0.95)
    report = (out / "report.md").read_text()
    assert "| metric | value | 95 % interval |" in report
    assert f"{bootstrap.RESAMPLES} resamples of the {m['n']} images, seed {bootstrap.SEED}" in report
    assert "Why per image: the split keeps one image per duplicate group" in report
    for k in bootstrap.STATS:
        assert iv[k]["value"] == pytest.approx(m[k], abs=1e-12), k  # the same score, two code paths
        bounds = f"[{iv[k]['low']:.3f}, {iv[k]['high']:.3f}]"
        assert f"| {k} | {m[k]:.4f} | {bounds} |" in report, k
        assert f"{k} {m[k]:.4f} {bounds}  " in res.stdout, k
    assert f"| ece | {m['ece']:.4f} |  |" in report  # no interval where none was computed
    assert f"ece {m['ece']:.4f}  (n={m['n']})" in res.stdout, res.stdout


@pytest.mark.parametrize(
    "flags, named",
    [(["--resamples", "0"], "--resamples"), (["--bootstrap-seed", "-1"], "--bootstrap-seed"),
     (["--confidence", "1"], "--confidence"), (["--confidence", "0"], "--confidence")],
)  # fmt: skip
def test_bad_bootstrap_flags_are_refused(flags, named, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate_stage.main(["--model", "m.pt", "--shards", "s", *flags])
    assert stop.value.code == 2 and named in capsys.readouterr().err


def test_default_workers_fit_this_machine(shards, trained_run, tmp_path):
    """No --workers: as many as this box's CPUs allow (the train split has more shards than
    CPUs), so PyTorch never warns that the DataLoader starts more workers than it suggests."""
    import os

    args = ["evaluate", "--model", trained_run / "model.pt", "--shards", shards, "--split", "train"]
    res = run_cli(*args, "--out", tmp_path / "out", "--errors", "0", env={"LOCAL_WORLD_SIZE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "suggested max number of worker" not in res.stderr, res.stderr[-3000:]
    cpus = len(os.sched_getaffinity(0))
    n = max(1, min(8, cpus))
    assert f"input: {n} worker{'s' if n > 1 else ''} per process (auto: {cpus} CPU" in res.stdout, res.stdout


def test_default_out_is_next_to_the_model_and_split_is_checked(shards, trained_run, tmp_path, capsys):
    # the shared run stays as trained: evaluate a copy (without its checkpoints)
    shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("state", "tb"))
    args = ["--model", str(tmp_path / "run/model.pt"), "--shards", str(shards), "--workers", "0"]
    flags = ["--resamples", "300", "--bootstrap-seed", "3", "--confidence", "0.9"]
    assert evaluate_stage.main([*args, "--split", "val", "--errors", "0", *flags]) == 0
    iv = json.loads((tmp_path / "run/eval-val/metrics.json").read_text())["intervals"]
    assert (iv["resamples"], iv["seed"], iv["confidence"]) == (300, 3, 0.9)
    assert "| metric | value | 90 % interval |" in (tmp_path / "run/eval-val/report.md").read_text()
    assert not (tmp_path / "run/eval-val/errors.png").exists()
    assert evaluate_stage.main([*args, "--split", "nope"]) == 1
    assert "no 'nope' split" in capsys.readouterr().err


@pytest.mark.slow
def test_one_and_two_processes_give_identical_metrics(shards, trained_run, evaluated, tmp_path):
    out = tmp_path / "two"
    args = ["-m", "artclf.evaluate", "--model", str(trained_run / "model.pt"), "--shards", str(shards)]
    res = accelerate_cpu(2, *args, "--out", str(out), "--workers", "1", "--batch-size", "8")
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((evaluated[0] / "metrics.json").read_text())
    two = json.loads((out / "metrics.json").read_text())
    assert (one.pop("world_size"), two.pop("world_size")) == (1, 2)
    assert one == two
    by_key = {r["key"]: r for r in read_predictions(evaluated[0])}
    assert {r["key"]: r for r in read_predictions(out)} == by_key


@pytest.fixture(scope="module")
def unseen_dir(tmp_path_factory):
    """Paintings of 2 artists outside the 50, in the styles of the session's sample set (seed 7)."""
    from artclf.sample_data import SampleDataConfig, generate

    out = tmp_path_factory.mktemp("unseen") / "data"
    generate(SampleDataConfig(out=out, scale=0.02, seed=7, max_side=128, unseen=2, quirks=False))
    return out / "unseen"


def test_calibration_and_open_set_on_test_and_unseen(shards, trained_run, unseen_dir, tmp_path):
    out = tmp_path / "eval"
    ev = evaluate(shards, trained_run, out, "--unseen", unseen_dir)
    assert ev.returncode == 0, ev.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    blob_t = m["calibration"]["temperature"]
    probs = np.load(out / "probabilities.npy").astype(np.float64)
    y = np.array([int(r["label"]) for r in read_predictions(out)])
    # before = the same logits at T = 1: softmax(T · log p) (log p is z / T up to a per-row constant)
    z = np.log(np.maximum(probs, 1e-30)) * blob_t
    before = np.exp(z - z.max(1, keepdims=True))
    before /= before.sum(1, keepdims=True)
    assert blob_t != 1.0
    assert m["calibration"]["ece_after"] == m["ece"] == pytest.approx(ece_by_definition(probs, y), abs=1e-6)
    assert m["calibration"]["ece_before"] == pytest.approx(ece_by_definition(before, y), abs=1e-4)
    assert m["calibration"]["log_loss_before"] == pytest.approx(
        skm.log_loss(y, before, labels=range(probs.shape[1])), rel=1e-3
    )
    ood = m["open_set"]
    known = probs.max(1)
    assert ood["known_rejected"] == pytest.approx((known < ood["threshold"]).mean())
    # unseen scores from `artclf predict` on the same folder (another code path) and scikit-learn's AUROC
    res = run_cli("predict", "--model", trained_run / "model.pt", unseen_dir, "--format", "json")
    assert res.returncode == 0, res.stderr
    answers = json.loads(res.stdout)
    scores = np.array([a["score"] for a in answers])
    assert ood["unseen_n"] == len(answers) == len(list(unseen_dir.rglob("*.jpg"))) > 0
    ref = skm.roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(scores))], np.r_[known, scores])
    assert ood["auroc"] == pytest.approx(ref, abs=1e-4)
    assert ood["unseen_rejected"] == pytest.approx((scores < ood["threshold"]).mean())
    assert ood["unseen_rejected"] == pytest.approx(np.mean([a["answer"] == "unknown" for a in answers]))
    assert set(ood["unseen_rejected_per_folder"]) == {"Katsushika_Hokusai", "Mary_Cassatt"}
    assert_figure(out / "reliability.png")
    report = (out / "report.md").read_text()
    assert f"{m['calibration']['ece_before']:.4f} before, **{m['ece']:.4f}**" in report
    assert "(reliability.png)" in report and f"AUROC known vs unseen **{ood['auroc']:.4f}**" in report
    assert f"ECE {m['calibration']['ece_before']:.4f} -> {m['ece']:.4f}" in ev.stdout
    assert (
        f"open set: threshold {ood['threshold']:.4f}" in ev.stdout
        and f"AUROC {ood['auroc']:.4f}" in ev.stdout
    )


def test_unseen_folder_that_is_missing_is_a_clear_error(shards, trained_run, tmp_path):
    res = evaluate(shards, trained_run, tmp_path / "eval", "--unseen", tmp_path / "nope")
    assert res.returncode == 1 and "--unseen" in res.stderr and "nope: no such folder" in res.stderr


def test_a_shard_set_with_other_classes_than_the_model_is_an_error(shards, model_pt, tmp_path, capsys):
    """Scores against another class list would be wrong by construction: an error naming both
    and the first difference, not a warning."""
    info = json.loads((shards / "_info.json").read_text())
    args = ["--model", str(model_pt), "--shards", str(shards), "--out", str(tmp_path / "eval")]
    args += ["--workers", "0"]
    assert evaluate_stage.main(args) == 1
    err = capsys.readouterr().err
    assert f"{shards} has other classes than {model_pt}" in err, err
    first = next(i for i, (a, b) in enumerate(zip(info["classes"], CLASSES, strict=False)) if a != b)
    assert f"class {first}: '{info['classes'][first]}' in the shards, '{CLASSES[first]}' in the model" in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow  # ~7 s: a stage of its own, with a worker that never answers
def test_a_stalled_read_ends_on_the_data_timeout_with_every_stack(shards, tmp_path):
    """A test shard that never answers (a FIFO nobody writes): --data-timeout ends the stage with
    an error naming the flag, and the stacks of its threads on stderr to tell where it hung."""
    import os

    import torch

    from artclf.model import build_model, save_model
    from tests.conftest import TINY_PRE

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    info = json.loads((copy / "_info.json").read_text())
    stalled = copy / info["splits"]["test"]["filenames"][0]
    stalled.unlink()
    os.mkfifo(stalled)
    torch.manual_seed(0)
    model = build_model("resnet18", "none", len(info["classes"]), TINY_PRE)
    save_model(tmp_path / "model.pt", model, info["classes"], TINY_PRE, "resnet18", {})
    res = run_cli(
        "evaluate", "--model", tmp_path / "model.pt", "--shards", copy, "--out", tmp_path / "eval",
        "--workers", "1", "--data-timeout", "2", "--storage-patience", "1", timeout=120,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    assert "artclf evaluate: error: " in res.stderr and "--data-timeout 2" in res.stderr, res.stderr[-3000:]
    assert "most recent call first" in res.stderr and "Thread 0x" in res.stderr, res.stderr[-3000:]
