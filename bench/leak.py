"""The leak of a random split, measured: the same recipe scored under artclf's protocol and the
published project's, on a sample set whose planted copies are known.

    python -m bench.leak OUT [--scale 0.2] [--epochs 10] [--seeds 0,1,2] [--split-seed 0]
                             [--data-seed 0] [--weights FILE]

One sample set (``artclf sample-data OUT/data``, its default copies: about 11 % of the files of
the largest classes, fewer in proportion below 450 real paintings, a few filed under two
artists; kinds resize/re-encode, colour cast, grayscale, flip, re-photographed crop), then two
work folders, each built by the CLI's own stages:

* ``honest`` (artclf): ``ingest`` -> ``dedup`` (MobileNetV2) -> ``split`` (80/10/10, groups
  never straddle) -> ``shard``; the trainer chooses its model on val, scored on ``test``.
* ``published`` (the published project): ``ingest``, then what it did instead of dedup: the
  planted copies in the two largest classes (Vincent van Gogh, Edgar Degas) removed "by hand"
  (from ``sample_truth.json``), every other usable file kept as its own group; then
  ``split --ratios 0.8,0.2`` (per artist, at random) -> ``shard``. Twins land on both sides, and
  the two-way split's ``val`` is the test: the model is chosen and scored on it.

Each protocol trains the demo's recipe (``python -m artclf.train``, one process: MobileNetV2
from ``--weights``, 128 px, global batch 32, lr 1e-3) once per seed, and ``artclf evaluate``
scores it on its own test split. Reported: macro F1 and accuracy per run with the 95 %
percentile bootstrap interval (``artclf.metrics.bootstrap``, per image, as ``evaluate``),
mean ± std over seeds, published − honest of the means; the paired bootstrap of that
difference, seed by seed, on the test images both splits share (matched by sample key); and
the leak itself: test images whose twin (from the truth) is in train, and how many of them the
published models get right against the other test images. Prints tables; writes
``OUT/leak.json``. A rerun skips every step whose output exists (stage logs in ``OUT/logs``),
so after a change of the analysis it only rescores. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from artclf import manifest
from artclf.artists import SAMPLE_TRUTH
from artclf.atomic import write_json
from artclf.metrics import bootstrap
from artclf.shard.layout import sample_key
from artclf.sweep.runs import read_eval

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("honest", "published")
TEST_SPLIT = {"honest": "test", "published": "val"}  # the published split's val is its test
HAND_DEDUPED = 2  # the published project removed copies by hand from its two largest classes
HAND = "hand_dedup.json"
RECIPE = ("--arch", "mobilenet_v2", "--image-size", "128", "--batch-size", "32", "--lr", "1e-3")
SHARD = ("--readers", "1", "--reader-workers", "2")  # one training process on this machine
STATS = ("macro_f1", "accuracy")

Step = tuple[str, list | Callable[[], None]]  # (output it leaves, CLI args or a function)


def cli(logs: Path, name: str, *args) -> None:
    """``python -m <args>`` in the repository, its output in ``logs/name.log``; a failure ends
    the bench with the end of that log."""
    logs.mkdir(parents=True, exist_ok=True)
    log, cmd = logs / f"{name}.log", [sys.executable, "-m", *map(str, args)]
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        raise SystemExit(f"leak: `{' '.join(cmd)}` exited {rc}; the end of {log}:\n{tail}")
    print(f"leak: {name} done in {time.perf_counter() - start:.0f} s", flush=True)


def stages(work: Path, logs: Path, steps: list[Step]) -> None:
    """Run ``steps`` from the first whose output is missing (a step redone redoes the rest)."""
    todo = next((i for i, (done, _) in enumerate(steps) if not (work / done).exists()), len(steps))
    for _, step in steps[todo:]:
        if callable(step):
            step()
        else:
            cli(logs, f"{work.name}-{step[0]}", "artclf", *step)


def honest(work: Path, data: Path, weights: Path, split_seed: int, logs: Path) -> None:
    """artclf's protocol, its defaults: dedup groups never straddle, model chosen on val."""
    stages(
        work,
        logs,
        [
            ("manifest.jsonl", ["ingest", data, "--work", work]),
            ("dedup/report.json", ["dedup", "--work", work, "--arch", "mobilenet_v2", "--weights", weights]),
            ("split.json", ["split", "--work", work, "--seed", split_seed]),
            ("shards/_info.json", ["shard", "--work", work, "--out", work / "shards", *SHARD]),
        ],
    )


def published(work: Path, data: Path, split_seed: int, logs: Path) -> None:
    """The published protocol: copies removed by hand in two classes, a random 80/20 split."""
    truth = read_truth(data)
    stages(
        work,
        logs,
        [
            ("manifest.jsonl", ["ingest", data, "--work", work]),
            (HAND, lambda: hand_dedup(work, truth)),
            ("split.json", ["split", "--work", work, "--ratios", "0.8,0.2", "--seed", split_seed]),
            ("shards/_info.json", ["shard", "--work", work, "--out", work / "shards", *SHARD]),
        ],
    )


def read_truth(data: Path) -> dict:
    return json.loads((data / SAMPLE_TRUTH).read_text())


def hand_dedup(work: Path, truth: dict) -> dict:
    """Write ``group`` and ``keep`` into WORK's manifest as dedup would, but as the published
    project deduplicated: by hand, in its two largest classes only. Every usable file is its own
    group (so ``artclf split`` deals files, not paintings) and is kept unless it is a planted
    copy (not the original) filed in one of those classes. Records the choice in WORK/hand_dedup.json."""
    rows = sorted(manifest.read_manifest(work), key=lambda r: r["path"])
    sizes = Counter(r["artist"] for r in manifest.usable(rows))
    largest = sorted(sizes, key=lambda a: (-sizes[a], a))[:HAND_DEDUPED]
    copies = {m["path"] for g in truth["duplicate_groups"] for m in g["members"] if m["kind"] != "original"}
    removed = sorted(r["path"] for r in rows if r["artist"] in largest and r["path"] in copies)
    dropped = set(removed)
    for i, r in enumerate(rows):
        usable = r["status"] == manifest.OK
        r["group"], r["keep"] = (i if usable else None), usable and r["path"] not in dropped
    manifest.write_manifest(work, rows)
    record = {"classes": largest, "removed": removed}
    write_json(work / HAND, record)
    return record


def leak(rows: list[dict], truth: dict, test_split: str) -> dict:
    """Test images whose twin (another file of the same planted group) is kept in train."""
    group = {m["path"]: i for i, g in enumerate(truth["duplicate_groups"]) for m in g["members"]}
    kept = [r for r in rows if r.get("keep")]
    train = {group[r["path"]] for r in kept if r.get("split") == "train" and r["path"] in group}
    test = [r for r in kept if r.get("split") == test_split]
    twins = [r for r in test if group.get(r["path"]) in train]
    return {
        "test_images": len(test),
        "with_twin_in_train": len(twins),
        "share": len(twins) / len(test) if test else 0.0,
        "by_artist": dict(Counter(r["artist"] for r in twins).most_common()),
        "keys": sorted(sample_key(r["path"]) for r in twins),  # as the shards and evaluate name them
    }


def on_twins(ev: Path, twins: list[str]) -> dict:
    """Right answers of one run on its test images with a twin in train, and on the others."""
    keys, y, p = predictions(ev)
    right, has = p.argmax(1) == y, np.isin(keys, twins)
    return {
        name: {"n": int(part.sum()), "correct": int((right & part).sum())}
        for name, part in (("with_twin", has), ("without", ~has))
    }


def planted(truth: dict, hand: dict) -> dict:
    """What the sample set plants: files, copies by kind, copies in the hand-deduplicated classes."""
    copies = [m for g in truth["duplicate_groups"] for m in g["members"] if m["kind"] != "original"]
    return {
        "files": sum(truth["counts"].values()),
        "copies": len(copies),
        "groups": len(truth["duplicate_groups"]),
        "cross_artist_groups": sum(g["cross_artist"] for g in truth["duplicate_groups"]),
        "by_kind": dict(Counter(m["kind"] for m in copies).most_common()),
        "hand_deduplicated": hand["classes"],
        "removed_by_hand": len(hand["removed"]),
    }


def train_and_score(a: argparse.Namespace, weights: Path, protocol: str, seed: int) -> Path:
    """The demo's recipe on the protocol's shards (one process), then ``artclf evaluate`` on its
    test split -> the evaluation folder."""
    run, shards, split = (
        a.out / "runs" / f"{protocol}-seed{seed}",
        a.out / protocol / "shards",
        TEST_SPLIT[protocol],
    )
    out = run / f"eval-{split}"
    if not (out / "metrics.json").is_file():
        train = ["--shards", shards, "--run", run, *RECIPE, "--weights", weights]
        cli(a.out / "logs", f"{run.name}-train", "artclf.train", *train, "--epochs", a.epochs, "--seed", seed)
        score = ["--model", run / "model.pt", "--shards", shards, "--split", split, "--errors", 0]
        cli(a.out / "logs", f"{run.name}-evaluate", "artclf", "evaluate", *score)
    return out


def predictions(ev: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, labels, probabilities) of one ``artclf evaluate`` folder, rows in the same order,
    read and checked as ``artclf compare`` reads them."""
    scored = read_eval(ev)
    return scored.keys, scored.labels, scored.probs


def scores(evals: dict[str, dict[int, Path]]) -> dict:
    """Per protocol: each seed's interval, mean and std over seeds; then published − honest."""
    out: dict = {}
    for protocol, by_seed in evals.items():
        runs = {}
        for seed, ev in by_seed.items():
            _, y, p = predictions(ev)
            iv = bootstrap.intervals(y, p)
            runs[seed] = {"n": len(y), **{k: iv[k] for k in STATS}}
        values = {k: np.array([r[k]["value"] for r in runs.values()]) for k in STATS}
        summary = {k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
                   for k, v in values.items()}  # fmt: skip
        out[protocol] = {"runs": runs, **summary}
    out["difference"] = {k: out["published"][k]["mean"] - out["honest"][k]["mean"] for k in STATS}
    return out


def paired(honest_ev: Path, published_ev: Path) -> dict:
    """Published − honest on the test images both splits hold (matched by sample key, in key
    order), both models scored on the same resamples (``bootstrap.paired_difference``)."""
    ka, ya, pa = predictions(honest_ev)
    kb, yb, pb = predictions(published_ev)
    common = sorted(set(ka) & set(kb))
    if not common:
        return {"n": 0}
    ia, ib = ({k: i for i, k in enumerate(keys)} for keys in (ka, kb))
    a, b = [ia[k] for k in common], [ib[k] for k in common]
    if not np.array_equal(ya[a], yb[b]):
        raise SystemExit(f"leak: {honest_ev} and {published_ev} label a shared image differently")
    return bootstrap.paired_difference(ya[a], pb[b], pa[a])


def report(result: dict) -> str:
    """The tables of ``leak.json``, in Markdown."""
    s, lines = result["scores"], []
    lines += [
        "| protocol | seed | test images | macro F1 [95 % CI] | accuracy [95 % CI] |",
        "| --- " * 5 + "|",
    ]
    for protocol in PROTOCOLS:
        for seed, r in s[protocol]["runs"].items():
            row = [protocol, seed, r["n"], bootstrap.bracket(r["macro_f1"]), bootstrap.bracket(r["accuracy"])]
            lines.append("| " + " | ".join(map(str, row)) + " |")
        mean = [f"{s[protocol][k]['mean']:.3f} ± {s[protocol][k]['std']:.3f}" for k in STATS]
        lines.append(f"| {protocol} | mean ± std | | {mean[0]} | {mean[1]} |")
    d = s["difference"]
    lines.append(f"| published − honest | of the means | | {d['macro_f1']:+.3f} | {d['accuracy']:+.3f} |")
    lines += ["", "Paired, on the test images both splits hold (published − honest, same resamples):", ""]
    head = (
        "seed",
        "shared images",
        "Δ macro F1 [95 % CI]",
        "Δ accuracy [95 % CI]",
        "accuracy: P(published better)",
    )
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| --- " * 5 + "|")
    for seed, p in result["paired"].items():
        if not p["n"]:
            lines.append(f"| {seed} | 0 | | | |")
            continue
        f1, acc = (f"{p[k]['difference']:+.3f} [{p[k]['low']:+.3f}, {p[k]['high']:+.3f}]" for k in STATS)
        lines.append(f"| {seed} | {p['n']} | {f1} | {acc} | {p['accuracy']['a_better']:.2f} |")
    lines.append("")
    for protocol in PROTOCOLS:
        lk = result["leak"][protocol]
        lines.append(
            f"leak, {protocol}: {lk['with_twin_in_train']} of {lk['test_images']} test images "
            f"({lk['share']:.1%}) have a twin in train {lk['by_artist'] or ''}"
        )
    for seed, t in result["published_on_twins"].items():
        w, o = t["with_twin"], t["without"]
        lines.append(
            f"published, seed {seed}: right on {w['correct']} of {w['n']} test images with a twin in train, "
            f"{o['correct']} of {o['n']} without"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder: data, work folders, runs, logs, leak.json")
    ap.add_argument("--scale", type=float, default=0.2, help="sample-data --scale (0.2: about 1,700 files)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of every run")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (one run each)")
    ap.add_argument("--split-seed", type=int, default=0, help="artclf split --seed of both protocols")
    ap.add_argument("--data-seed", type=int, default=0, help="sample-data --seed")
    ap.add_argument(
        "--weights",
        type=Path,
        help="MobileNetV2 weights (default: OUT/mobilenet_v2.pt, made as the Makefile's)",
    )
    a = ap.parse_args(argv)
    a.out = a.out.resolve()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    start, logs, data = time.time(), a.out / "logs", a.out / "data"
    if not (data / SAMPLE_TRUTH).is_file():
        cli(logs, "sample-data", "artclf", "sample-data", data, "--scale", a.scale, "--seed", a.data_seed)
    weights = a.weights.resolve() if a.weights else a.out / "mobilenet_v2.pt"
    if not weights.is_file():  # the Makefile's demo/mobilenet_v2.pt recipe
        cli(logs, "weights", "tests.support.mobilenet_weights", weights)
    honest(a.out / "honest", data, weights, a.split_seed, logs)
    published(a.out / "published", data, a.split_seed, logs)
    evals = {p: {s: train_and_score(a, weights, p, s) for s in a.seeds} for p in PROTOCOLS}
    truth = read_truth(data)
    hand = json.loads((a.out / "published" / HAND).read_text())
    leaks = {p: leak(manifest.read_manifest(a.out / p), truth, TEST_SPLIT[p]) for p in PROTOCOLS}
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "hardware": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "planted": planted(truth, hand),
        "leak": leaks,
        "scores": scores(evals),
        "paired": {s: paired(evals["honest"][s], evals["published"][s]) for s in a.seeds},
        "published_on_twins": {
            s: on_twins(evals["published"][s], leaks["published"]["keys"]) for s in a.seeds
        },
        "wall_s": round(time.time() - start),  # of this invocation (a rerun skips what exists)
    }
    write_json(a.out / "leak.json", result)
    print(report(result))
    print(f"-> {a.out / 'leak.json'}")


if __name__ == "__main__":
    main()
