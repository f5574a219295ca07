"""compare on three fixture runs in the real formats (two seeds of one config, one of another):
every number of compare.json against an independent computation here (statistics.mean/stdev,
a plain loop over the same bootstrap draws with scikit-learn per resample), the config
differences, runs on other images left unpaired, and the errors that name a missing file."""

from __future__ import annotations

import csv
import itertools
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from artclf.atomic import write_json, write_jsonl
from artclf.config import to_dict
from artclf.sweep.compare import main
from artclf.train.config import TrainConfig

R, C = 300, 6  # resamples (for speed), classes
CONFIDENCE = 0.95


def synthetic(n: int, strength: float, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys, labels and softmax probabilities that are right more often the larger ``strength``."""
    rng = np.random.default_rng(seed)
    labels = np.random.default_rng(99).integers(0, C, n)  # the same split for every run
    logits = rng.normal(size=(n, C))
    logits[np.arange(n), labels] += strength
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return [f"img_{i:04d}" for i in range(n)], labels, probs.astype(np.float32)


def make_run(root: Path, name: str, vals: list[float], done: int | None = None, **flags) -> Path:
    """A run folder as artclf train leaves it: config.json, history.jsonl, val_metrics.json, model.pt;
    ``done``: the epochs in its history (default: one per value of ``vals``)."""
    run = root / name
    cfg = TrainConfig(shards=str(root / "shards"), run=run, **flags)
    write_json(run / "config.json", {"config": to_dict(cfg), "derived": {}, "versions": {}})
    rows = [
        {"epoch": e + 1, "step": 10 * (e + 1), "train_loss": 1.0, "val_macro_f1": v}
        for e, v in enumerate(vals)
    ]
    write_jsonl(run / "history.jsonl", rows[: done or len(rows)])
    write_json(run / "val_metrics.json", {"macro_f1": max(vals), "accuracy": 0.5})
    (run / "model.pt").write_bytes(b"not read by compare")
    return run


def make_eval(folder: Path, keys, labels, probs, model: Path | None = None) -> Path:
    """An eval folder as artclf evaluate writes it (rows in the order given)."""
    write_json(folder / "metrics.json", {"split": "test", "model": str(model), "model_created": "t0"})
    pred = probs.argmax(1)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "label", "pred", "true_class", "pred_class", "prob", "true_prob"])
        for k, y, p, row in zip(keys, labels, pred, probs, strict=True):
            w.writerow([k, y, p, f"c{y}", f"c{p}", row[p], row[y]])
    np.save(folder / "probabilities.npy", probs)
    return folder


def scored_run(root, name, vals, strength, seed, order=None, n=90, **flags) -> Path:
    run = make_run(root, name, vals, seed=seed, **flags)
    keys, labels, probs = synthetic(n, strength, seed=100 + seed + int(1000 * flags.get("lr", 0)))
    idx = np.arange(n) if order is None else order
    make_eval(run / "eval-test", [keys[i] for i in idx], labels[idx], probs[idx], run / "model.pt")
    return run


def loop_interval(values: list[float]) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def macro_f1(labels, pred, i) -> float:
    """scikit-learn's macro F1 of the images i: over the classes they hold (true or predicted),
    plus the classes the whole split lacks, at 0 (artclf.metrics.bootstrap's documented rule)."""
    held = np.union1d(np.union1d(labels[i], pred[i]), np.setdiff1d(np.arange(C), labels))
    return f1_score(labels[i], pred[i], labels=held, average="macro", zero_division=0)


def reference(labels, probs, seed: int = 0) -> dict:
    """Point value and interval of macro F1 and accuracy: a loop over the documented draws."""
    pred = probs.argmax(1)
    draws = np.random.default_rng(seed).integers(0, len(labels), size=(R, len(labels)))

    def f1(i):
        return macro_f1(labels, pred, i)

    out = {}
    for stat, fn in (("macro_f1", f1), ("accuracy", lambda i: float((pred[i] == labels[i]).mean()))):
        out[stat] = (fn(np.arange(len(labels))), *loop_interval([fn(d) for d in draws]))
    return out


def read_eval(run: Path):
    with open(run / "eval-test" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    return (
        [r["key"] for r in rows],
        np.array([int(r["label"]) for r in rows]),
        np.load(run / "eval-test" / "probabilities.npy"),
    )


@pytest.fixture
def three(tmp_path):
    """Two seeds of lr 1e-3 and one of lr 1e-2; the last scored with its rows in another order."""
    shuffled = np.random.default_rng(5).permutation(90)
    return [
        scored_run(tmp_path, "a", [0.40, 0.55, 0.52], 1.5, seed=0, lr=1e-3),
        scored_run(tmp_path, "b", [0.45, 0.50, 0.61], 2.0, seed=1, lr=1e-3),
        scored_run(tmp_path, "c", [0.30, 0.35, 0.38], 0.8, seed=0, order=shuffled, lr=1e-2),
    ]


def test_three_runs_every_number_against_a_loop(three, tmp_path, capsys):
    a, b, c = three
    out = tmp_path / "table"
    # a run folder, an eval folder (its run found through metrics.json's model) and a run folder
    argv = [str(a), str(b / "eval-test"), str(c), "--out", str(out), "--resamples", str(R)]
    assert main(argv) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["differing_flags"] == ["lr"]  # the seed is a column, run paths are not config
    rows = {r["name"]: r for r in data["runs"]}
    assert list(rows) == ["a", "b", "c"]
    for run in three:
        row = rows[run.name]
        config = json.loads((run / "config.json").read_text())["config"]
        assert row["config"] == {"lr": config["lr"]} and row["seed"] == config["seed"]
        assert row["val_macro_f1"] == json.loads((run / "val_metrics.json").read_text())["macro_f1"]
        keys, labels, probs = read_eval(run)
        for stat, (value, low, high) in reference(labels, probs).items():
            got = row["test"][stat]
            assert (got["value"], got["low"], got["high"]) == pytest.approx((value, low, high), abs=1e-12)
        assert row["test"]["n"] == len(keys)
    assert rows["b"]["val_epoch"] == 3 and rows["a"]["val_epoch"] == 2

    groups = {tuple(g["runs"]): g for g in data["groups"]}
    assert set(groups) == {("a", "b"), ("c",)}
    vals = [0.55, 0.61]
    tests = [rows[n]["test"]["macro_f1"]["value"] for n in ("a", "b")]
    g = groups[("a", "b")]
    assert g["val_macro_f1"] == {"n": 2, "mean": statistics.mean(vals), "std": statistics.stdev(vals)}
    assert g["test_macro_f1"]["mean"] == pytest.approx(statistics.mean(tests), abs=1e-15)
    assert g["test_macro_f1"]["std"] == pytest.approx(statistics.stdev(tests), abs=1e-15)
    assert groups[("c",)]["val_macro_f1"]["std"] is None  # one run: no spread

    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    assert set(pairs) == set(itertools.combinations("abc", 2))
    for (x, y), p in pairs.items():
        assert p["paired"] and p["n"] == 90
        check_pair(p, tmp_path / x, tmp_path / y)
    text = (out / "compare.md").read_text()
    assert "holds 0 means this test split cannot tell the two runs apart" in text
    assert "| run | lr | seed |" in text
    printed = capsys.readouterr().out
    assert str(out / "compare.md") in printed and "a − b: macro F1" in printed


def check_pair(p: dict, run_a: Path, run_b: Path) -> None:
    """The paired difference, rows aligned by key, against a loop over the same draws."""
    keys_a, labels, probs_a = read_eval(run_a)
    keys_b, labels_b, probs_b = read_eval(run_b)
    order = [keys_b.index(k) for k in keys_a]
    assert (labels_b[order] == labels).all()
    pa, pb = probs_a.argmax(1), probs_b[order].argmax(1)
    draws = np.random.default_rng(0).integers(0, len(labels), size=(R, len(labels)))
    for stat in ("macro_f1", "accuracy"):

        def score(pred, i, stat=stat):
            if stat == "accuracy":
                return float((pred[i] == labels[i]).mean())
            return macro_f1(labels, pred, i)

        d = np.array([score(pa, i) - score(pb, i) for i in draws])
        whole = np.arange(len(labels))
        got = p[stat]
        assert got["difference"] == pytest.approx(score(pa, whole) - score(pb, whole), abs=1e-12)
        assert (got["low"], got["high"]) == pytest.approx(loop_interval(list(d)), abs=1e-12)
        assert got["a_better"] == pytest.approx((d > 0).mean() + 0.5 * (d == 0).mean(), abs=1e-12)


def test_runs_scored_on_other_images_are_not_paired(three, tmp_path):
    a, b, _ = three
    other = make_run(tmp_path, "d", [0.5], seed=2, lr=1e-3)
    keys, labels, probs = synthetic(90, 1.0, seed=3)
    make_eval(other / "eval-test", keys[:60], labels[:60], probs[:60], other / "model.pt")
    assert main([str(a), str(b), str(other), "--out", str(tmp_path), "--resamples", "50"]) == 0
    pairs = {(p["a"], p["b"]): p for p in json.loads((tmp_path / "compare.json").read_text())["pairs"]}
    assert pairs[("a", "b")]["paired"]
    for key in (("a", "d"), ("b", "d")):
        assert not pairs[key]["paired"] and "different images (90 and 60, 60 shared)" in pairs[key]["why"]
    assert "a vs d: not paired" in (tmp_path / "compare.md").read_text()


def test_the_same_keys_with_other_labels_are_not_the_same_split(three, tmp_path, capsys):
    a, b, _ = three
    keys, labels, probs = read_eval(b)
    make_eval(b / "eval-test", keys, (labels + 1) % C, probs, b / "model.pt")
    assert main([str(a), str(b), "--out", str(tmp_path / "o"), "--resamples", "50"]) == 1
    err = capsys.readouterr().err
    assert "not the same split" in err and "img_0000" in err
    assert not (tmp_path / "o" / "compare.json").exists()


def test_a_missing_file_is_named(three, tmp_path, capsys):
    a, b, _ = three
    (b / "eval-test" / "predictions.csv").unlink()
    assert main([str(a), str(b), "--out", str(tmp_path / "o")]) == 1
    assert f"{b / 'eval-test' / 'predictions.csv'}: missing" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "nowhere")]) == 1
    assert f"{tmp_path / 'nowhere'}: neither a run folder" in capsys.readouterr().err
    assert main([str(a), str(a / "eval-test")]) == 1  # the same run twice
    assert "named twice" in capsys.readouterr().err


def test_runs_without_test_scores_show_val_only(tmp_path):
    runs = [make_run(tmp_path, n, v, seed=s, lr=1e-3) for n, v, s in (("x", [0.2, 0.3], 0), ("y", [0.4], 1))]
    assert main([*map(str, runs), "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["differing_flags"] == [] and data["pairs"] == []
    assert [r["test"] for r in data["runs"]] == [None, None]
    [group] = data["groups"]
    assert group["val_macro_f1"]["mean"] == statistics.mean([0.3, 0.4]) and group["test_macro_f1"]["n"] == 0
