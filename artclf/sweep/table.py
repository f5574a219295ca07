"""The table of runs that ``artclf compare`` and ``artclf sweep summary`` write (``.md`` and ``.json``).

Per run: the flags that differ between the runs (paths and the seed aside; the seed is its own
column), val macro F1 of the epoch the model was kept at, and test macro F1 and accuracy with
their bootstrap intervals (:func:`artclf.metrics.bootstrap.intervals`, from the eval folder's
predictions, so evaluations written before intervals existed work too). Per config (every flag
but the seed and the paths): the number of runs, mean and sample standard deviation over the
seeds. Per pair of runs scored on the same test images: the paired bootstrap of A − B
(:func:`artclf.metrics.bootstrap.paired_difference`), rows aligned by key.
"""

from __future__ import annotations

import io
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

from artclf.atomic import atomic_open, write_json
from artclf.errors import ArtclfError
from artclf.metrics.bootstrap import bracket, intervals, paired_difference
from artclf.sweep.runs import Run, Scored

PATHS = ("run", "shards")  # where a run was and read from, not what it computed
NOT_CONFIG = (*PATHS, "seed")
HOW_TO_READ = (
    "Intervals: {confidence:.0%} percentile bootstrap over the test images ({resamples} resamples, "
    "seed {seed}); a paired difference scores both runs on each of the same resamples. An interval "
    "of a difference that holds 0 means this test split cannot tell the two runs apart; "
    "P(A > B) is the share of resamples where A scored higher (ties count half)."
)


def _same(values: list) -> bool:
    return len({json.dumps(v, sort_keys=True) for v in values}) <= 1


def differing(runs: list[Run]) -> list[str]:
    """The flags whose values differ between the runs (a flag a run lacks counts as differing)."""
    known = [r.flags for r in runs if r.flags is not None]
    names = list(dict.fromkeys(k for f in known for k in f))
    return [k for k in names if k not in NOT_CONFIG and not _same([f.get(k) for f in known])]


def _key(run: Run) -> str:
    if run.flags is None:
        return f"? {run.path}"  # nothing known of its config: a group of its own
    return json.dumps({k: v for k, v in run.flags.items() if k not in NOT_CONFIG}, sort_keys=True)


def spread(values: list[float]) -> dict:
    """n, mean and sample standard deviation (ddof 1; None for fewer than two values)."""
    return {
        "n": len(values),
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _label(runs: list[Run], diff: list[str]) -> str:
    """A group's name: its sweep config, else its differing flags."""
    if runs[0].flags is None:
        return f"{runs[0].name} (no config.json)"
    configs = {(r.point or {}).get("config") for r in runs}
    if len(configs) == 1 and None not in configs:
        return configs.pop()
    return ", ".join(f"{k}={runs[0].flags.get(k)}" for k in diff) or "all (same flags)"


def _row(run: Run, diff: list[str], resamples: int, seed: int, confidence: float) -> dict:
    test = None
    if run.scored is not None:
        s = run.scored
        test = intervals(s.labels, s.probs, resamples=resamples, seed=seed, confidence=confidence)
        test.update(n=len(s.keys), split=s.split, eval=str(s.path))
    flags = run.flags or {}
    return {
        "name": run.name,
        "path": str(run.path),
        "seed": flags.get("seed"),
        "config": {k: flags.get(k) for k in diff} if run.flags is not None else None,
        "val_macro_f1": run.val_macro_f1,
        "val_epoch": run.val_epoch,
        "test": test,
    }


def align(a: Scored, b: Scored) -> np.ndarray | None:
    """Indices that put B's rows in A's key order; None when they scored other images. Labels
    that disagree on a key: not the same split (an error)."""
    if len(a.keys) != len(b.keys) or set(a.keys) != set(b.keys):
        return None
    where = {k: i for i, k in enumerate(b.keys)}
    order = np.array([where[k] for k in a.keys])
    wrong = np.flatnonzero(b.labels[order] != a.labels)
    if a.probs.shape[1] != b.probs.shape[1]:
        raise ArtclfError(f"{a.path} and {b.path}: {a.probs.shape[1]} vs {b.probs.shape[1]} classes")
    if len(wrong):
        i = wrong[0]
        raise ArtclfError(
            f"{a.path} and {b.path}: the same keys but not the same split (key {a.keys[i]}: label "
            f"{a.labels[i]} vs {b.labels[order][i]}); pair runs scored on one test split"
        )
    return order


def _pairs(runs: list[Run], resamples: int, seed: int, confidence: float) -> list[dict]:
    out = []
    for a, b in itertools.combinations([r for r in runs if r.scored is not None], 2):
        order = align(a.scored, b.scored)
        if order is None:
            shared = len(set(a.scored.keys) & set(b.scored.keys))
            why = (
                f"scored on different images ({len(a.scored.keys)} and {len(b.scored.keys)}, {shared} shared)"
            )
            out.append({"a": a.name, "b": b.name, "paired": False, "why": why})
            continue
        d = paired_difference(
            a.scored.labels, a.scored.probs, b.scored.probs[order],
            resamples=resamples, seed=seed, confidence=confidence,
        )  # fmt: skip
        out.append({"a": a.name, "b": b.name, "paired": True, **d})
    return out


def build(runs: list[Run], resamples: int, seed: int, confidence: float) -> dict:
    """Everything in the tables, JSON-ready."""
    diff = differing(runs)
    rows = [_row(r, diff, resamples, seed, confidence) for r in runs]
    by: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        by.setdefault(_key(r), []).append(i)
    groups = []
    for idx in by.values():
        label = _label([runs[i] for i in idx], diff)
        for i in idx:
            rows[i]["group"] = label
        vals = [rows[i]["val_macro_f1"] for i in idx if rows[i]["val_macro_f1"] is not None]
        tests = [rows[i]["test"]["macro_f1"]["value"] for i in idx if rows[i]["test"]]
        groups.append({"config": label, "runs": [rows[i]["name"] for i in idx],
                       "val_macro_f1": spread(vals), "test_macro_f1": spread(tests)})  # fmt: skip
    return {
        "resamples": resamples, "seed": seed, "confidence": confidence, "differing_flags": diff,
        "runs": rows, "groups": groups, "pairs": _pairs(runs, resamples, seed, confidence),
    }  # fmt: skip


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _test_cell(test: dict | None, stat: str) -> str:
    if test is None:
        return "—"
    cell = bracket(test[stat])
    return cell if test["split"] == "test" else f"{cell} ({test['split']})"


def _diff_cell(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def pair_line(p: dict) -> str:
    """One line of a pair, for the console and the markdown."""
    if not p["paired"]:
        return f"{p['a']} vs {p['b']}: not paired, {p['why']}"
    f1, acc = p["macro_f1"], p["accuracy"]
    return (
        f"{p['a']} − {p['b']}: macro F1 {_diff_cell(f1)}, P(A > B) {f1['a_better']:.2f}; "
        f"accuracy {_diff_cell(acc)}, P(A > B) {acc['a_better']:.2f}"
    )


def group_line(g: dict) -> str:
    val, test = g["val_macro_f1"], g["test_macro_f1"]
    line = f"{g['config']}: {len(g['runs'])} run(s), val macro F1 {fmt(val['mean'])} ± {fmt(val['std'])}"
    if test["n"]:
        line += f", test macro F1 {fmt(test['mean'])} ± {fmt(test['std'])} ({test['n']} scored)"
    return line


def markdown(data: dict, level: int = 2) -> str:
    """The tables: runs, configs (mean ± std over seeds), paired differences."""
    h = "#" * level
    buf = io.StringIO()
    w = buf.write
    diff = data["differing_flags"]
    w(HOW_TO_READ.format(**data) + "\n\n")
    w(f"{h} Runs\n\n| run | " + "".join(f"{k} | " for k in diff) + "seed | val macro F1 (epoch) | ")
    w("test macro F1 | test accuracy | test images |\n|" + " --- |" * (len(diff) + 6) + "\n")
    for r in data["runs"]:
        config = r["config"] or {}
        epoch = f" ({r['val_epoch']})" if r["val_epoch"] is not None else ""
        w(f"| {r['name']} | " + "".join(f"{config.get(k, '?')} | " for k in diff))
        w(f"{r['seed'] if r['seed'] is not None else '?'} | {fmt(r['val_macro_f1'])}{epoch} | ")
        w(f"{_test_cell(r['test'], 'macro_f1')} | {_test_cell(r['test'], 'accuracy')} | ")
        w(f"{r['test']['n'] if r['test'] else '—'} |\n")
    w(f"\n{h} By config (mean ± sample std over seeds)\n\n| config | runs | val macro F1 mean | std | ")
    w("test macro F1 mean | std | scored |\n| --- | --- | --- | --- | --- | --- | --- |\n")
    for g in data["groups"]:
        val, test = g["val_macro_f1"], g["test_macro_f1"]
        w(f"| {g['config']} | {len(g['runs'])} | {fmt(val['mean'])} | {fmt(val['std'])} | ")
        w(f"{fmt(test['mean'])} | {fmt(test['std'])} | {test['n']} |\n")
    w(f"\n{h} Paired differences (A − B on the same test images)\n\n")
    paired = [p for p in data["pairs"] if p["paired"]]
    if paired:
        w("| A | B | macro F1 A − B | P(A > B) | accuracy A − B | P(A > B) |\n")
        w("| --- | --- | --- | --- | --- | --- |\n")
    for p in paired:
        f1, acc = p["macro_f1"], p["accuracy"]
        w(f"| {p['a']} | {p['b']} | {_diff_cell(f1)} | {f1['a_better']:.2f} | ")
        w(f"{_diff_cell(acc)} | {acc['a_better']:.2f} |\n")
    if not data["pairs"]:
        w("Fewer than two runs have test scores: nothing to pair.\n")
    for p in data["pairs"]:
        if not p["paired"]:
            w(f"\n- {pair_line(p)}")
    return buf.getvalue().rstrip() + "\n"


def write(folder: Path, stem: str, data: dict, text: str) -> Path:
    """``folder/stem.json`` and ``folder/stem.md``, each atomically; returns the markdown's path."""
    write_json(folder / f"{stem}.json", data)
    with atomic_open(folder / f"{stem}.md") as f:
        f.write(text)
    return folder / f"{stem}.md"
