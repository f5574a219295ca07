"""bench/gpu.sh, the one-call GPU check, in its CPU dry run (so it cannot rot between GPU
sessions), and its guard: a part that fails is reported and the next part still runs;
bench/leak.py's own parts (the published protocol, the pairing), without training; and
bench/dedup.py's scale bench at tiny sizes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from artclf import manifest
from tests.conftest import REPO

PARTS = ("setup", "synthetic", "data", "compiled", "recipe")


def gpu_check(out: Path, python: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = ["bash", "bench/gpu.sh", "--dry-run", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "out"
    res = gpu_check(out, sys.executable, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    for part in PARTS:
        assert re.search(rf"^{part} +ok ", summary, re.M), summary
    assert summary == res.stdout[-len(summary) :]  # the table comes last
    rows = json.loads((out / "synthetic.json").read_text())
    variants = ["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]
    assert sorted(r["variant"] for r in rows) == sorted(variants)
    assert all(r["images_per_s"] > 0 and r["warmup_s"] > 0 for r in rows)
    # the compiled run's model.pt was evaluated; the recipe ran all its epochs to model.pt
    metrics = json.loads((out / "run-compiled" / "eval" / "metrics.json").read_text())
    info = json.loads((out / "data" / "shards" / "_info.json").read_text())
    assert metrics["n"] == info["splits"]["val"]["num_samples"]
    history = (out / "run-recipe" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2 and (out / "run-recipe" / "model.pt").is_file()
    assert "2 epochs to model.pt in" in summary and "(measured)" in summary
    assert (out / "gpu.log").read_text().count("== ") >= len(PARTS)


def test_gpu_check_reports_each_failed_part_and_runs_the_rest(tmp_path):
    out = tmp_path / "out"
    res = gpu_check(out, "false", timeout=300)  # every Python step fails at once
    assert res.returncode == 1, res.stdout[-4000:]
    summary = (out / "summary.txt").read_text()
    for part in PARTS:
        assert re.search(rf"^{part} +failed \(\d+\) ", summary, re.M), summary


def test_leak_published_protocol_against_the_planted_truth(tmp_path):
    """bench/leak.py's published protocol (copies removed by hand in the two largest classes,
    files dealt 80/20 per artist by `artclf split`), checked against the sample set's truth: what
    is kept, the shares, and the leak counted by a plain loop over the planted groups."""
    from artclf.ingest import main as ingest
    from artclf.sample_data import SampleDataConfig, generate
    from artclf.split import main as split
    from bench.leak import hand_dedup, leak

    data, work = tmp_path / "data", tmp_path / "work"
    generate(SampleDataConfig(out=data, scale=0.05, seed=1, max_side=64, workers=1))
    assert ingest([str(data), "--work", str(work)]) == 0
    truth = json.loads((data / "sample_truth.json").read_text())
    record = hand_dedup(work, truth)
    assert split(["--work", str(work), "--ratios", "0.8,0.2", "--seed", "0"]) == 0
    rows = manifest.read_manifest(work)

    by_hand = {"Vincent van Gogh", "Edgar Degas"}  # the published project's two largest classes
    artist = {r["path"]: r["artist"] for r in rows}
    removed = {
        m["path"]
        for g in truth["duplicate_groups"]
        for m in g["members"]
        if m["kind"] != "original" and artist[m["path"]] in by_hand
    }
    assert set(record["classes"]) == by_hand and set(record["removed"]) == removed and removed
    usable = {r["path"] for r in rows if r["status"] == "ok"}
    assert {r["path"] for r in rows if r["keep"]} == usable - removed
    kept = Counter(r["artist"] for r in rows if r["keep"])
    tested = Counter(r["artist"] for r in rows if r["keep"] and r["split"] == "val")
    assert all(abs(tested[a] - 0.2 * n) <= 1 for a, n in kept.items())

    split_of = {r["path"]: r["split"] for r in rows if r["keep"]}
    twins = 0
    for g in truth["duplicate_groups"]:
        paths = [m["path"] for m in g["members"] if m["path"] in split_of]
        for p in paths:
            twins += split_of[p] == "val" and any(split_of[q] == "train" for q in paths if q != p)
    got = leak(rows, truth, "val")
    assert got["with_twin_in_train"] == twins > 0
    assert got["test_images"] == sum(tested.values())


def test_leak_pairs_the_two_protocols_on_their_shared_test_images(tmp_path):
    """bench/leak.py's paired difference matches images by key, whatever the row order: the same
    as bootstrap.paired_difference on the shared images lined up by a plain loop, in key order."""
    from artclf.metrics.bootstrap import paired_difference
    from bench.leak import paired

    rng = np.random.default_rng(0)
    keys = [f"k{i}" for i in range(40)]  # shared: k5 … k29, where key order is not numeric order
    label = dict(zip(keys, rng.integers(0, 5, 40).tolist(), strict=True))
    probs = {}
    for name, held in (("honest", keys[:30]), ("published", keys[5:])):
        order = [held[i] for i in rng.permutation(len(held))]
        probs[name] = {k: rng.dirichlet(np.ones(5)) for k in order}
        folder = tmp_path / name
        folder.mkdir()
        lines = ["key,label"] + [f"{k},{label[k]}" for k in order]
        (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
        (folder / "metrics.json").write_text(json.dumps({"split": "test"}))
        np.save(folder / "probabilities.npy", np.stack([probs[name][k] for k in order]))
    shared = sorted(k for k in keys if k in probs["honest"] and k in probs["published"])
    y = [label[k] for k in shared]
    expected = paired_difference(
        y, np.stack([probs["published"][k] for k in shared]), np.stack([probs["honest"][k] for k in shared])
    )
    assert paired(tmp_path / "honest", tmp_path / "published") == expected
    assert expected["n"] == 25


@pytest.mark.slow
def test_dedup_scale_bench_at_tiny_sizes(tmp_path):
    """bench/dedup.py end to end at N = 300 with 1 and 2 parts (each step a process of its own:
    one size keeps it at 8 of them): it exits 0 (the planted
    copies grouped, the look-alikes not, the same groups.json for every n), the real candidate
    search finds exactly the planted pairs a plain loop over the layout counts, the feature store
    is written once (bytes written = the files' sizes, but for the zip headers np.savez rewrites),
    and it leaves nothing behind."""
    from bench.dedup import layout

    cmd = [sys.executable, "-m", "bench.dedup", "--sizes", "300", "--parts", "1,2", "--images", "8"]
    cmd += ["--tmp", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    out = res.stdout
    assert re.search(r"^features +hashes only +\d+ images +[\d.]+ img/s$", out, re.M), out
    for n in (300,):
        lay = layout(n, 0.05, 0.3)  # the bench's defaults
        root = [int(lay.orig[i]) if lay.orig[i] >= 0 else i for i in range(n)]
        copy = lay.orig >= 0
        expected = sum(
            (root[i] == root[j] and (copy[i] or copy[j]))
            or (lay.cluster[i] >= 0 and lay.cluster[i] == lay.cluster[j])
            for i in range(n)
            for j in range(i + 1, n)
        )
        for parts in (1, 2):
            line = re.search(rf"^ +{n} +{parts} pairs .* (\d+) candidate pairs$", out, re.M)
            assert line and int(line.group(1)) == expected, out
            verify = re.search(rf"^ +{n} +{parts} verify +[\d.]+ +[\d.]+ +((?:[\d.]+ )*)", out, re.M)
            assert verify and len(verify.group(1).split()) == parts, out
            assert f"N={n} n={parts}: {lay.true_pairs} planted pairs, precision 1.0000, recall 1.0000" in out
        features = re.search(rf"^ +{n} +features .* ([\d.]+) files ([\d.]+) KiB/img", out, re.M)
        assert features and float(features.group(1)) == pytest.approx(float(features.group(2)), rel=0.01), out
    assert not list(tmp_path.iterdir())  # the work folders are removed
