"""Dedup quality against the planted truth of a sample data set: pairwise precision and recall.

    python -m bench.dedup_quality --data DIR --work WORK

Truth groups are closed transitively; a predicted pair is two usable images in one dedup
group. Recall is also given per kind of copy (a pair original–copy counts for the copy's kind).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

from artclf import manifest

WHOLE_PICTURE = ("resize_reencode", "color_cast", "grayscale", "flip")


def _pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def score(truth: dict, rows: list[dict]) -> dict:
    """Pairwise precision/recall of the manifest's groups against ``truth``."""
    ok = {r["path"]: r for r in manifest.usable(rows)}
    true_groups = [[m["path"] for m in g["members"] if m["path"] in ok] for g in truth["duplicate_groups"]]
    kind = {m["path"]: m["kind"] for g in truth["duplicate_groups"] for m in g["members"]}
    true = _pairs(true_groups)
    by_group = defaultdict(list)
    for path, r in ok.items():
        by_group[r["group"]].append(path)
    pred = _pairs(list(by_group.values()))
    hit = true & pred
    out = {
        "true_pairs": len(true),
        "predicted_pairs": len(pred),
        "correct": len(hit),
        "precision": len(hit) / len(pred) if pred else 1.0,
        "recall": len(hit) / len(true) if true else 1.0,
        "recall_by_kind": {},
    }
    for k in sorted({v for v in kind.values() if v != "original"}):
        # a pair belongs to a kind when one side is a copy of that kind
        pk = {p for p in true if k in (kind[p[0]], kind[p[1]])}
        out["recall_by_kind"][k] = {"pairs": len(pk), "recall": len(pk & pred) / len(pk) if pk else 1.0}
    whole = {p for p in true if {kind[p[0]], kind[p[1]]} <= {"original", *WHOLE_PICTURE}}
    out["recall_whole_picture"] = len(whole & pred) / len(whole) if whole else 1.0
    false = sorted(pred - true)
    out["false_pairs_sample"] = false[:10]
    out["missed_pairs_sample"] = [(a, kind[a], b, kind[b]) for a, b in sorted(true - pred)[:10]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="sample data set (holds sample_truth.json)")
    ap.add_argument("--work", type=Path, required=True, help="work folder after `artclf dedup`")
    a = ap.parse_args()
    truth = json.loads((a.data / "sample_truth.json").read_text())
    print(json.dumps(score(truth, manifest.read_manifest(a.work)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
