"""Dedup quality against the planted truth of a sample data set: pairwise precision and recall.

    python -m bench.dedup_quality --data DIR --work WORK [--separation]

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


def separation(truth: dict, work: Path, cut: float = 0.80, k: int = 10) -> dict:
    """How well cosine and the aligned-thumbnail score separate copies from other pairs, over the
    CNN candidates (top-k, cosine >= ``cut``) of the embeddings cached in ``work/dedup``."""
    from artclf import alignment, features
    from artclf.neighbors import pairs_above, topk_similar

    rows = manifest.usable(manifest.read_manifest(work))
    model = json.loads((work / "dedup/embeddings.json").read_text())["model"]
    keys = sorted({r["sha256"] for r in rows})
    _, _, thumbs, emb = features.Features.load(work / "dedup", model).arrays(keys)
    index = {k: i for i, k in enumerate(keys)}
    sha = {r["path"]: r["sha256"] for r in rows}
    groups = [
        [index[sha[m["path"]]] for m in g["members"] if m["path"] in sha] for g in truth["duplicate_groups"]
    ]
    true = {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}
    sims, idx = topk_similar(emb, emb, k, exclude_self=True)
    cand = [tuple(p) for p in pairs_above(sims, idx, cut).tolist()]
    cos = {p: float(emb[p[0]] @ emb[p[1]]) for p in cand}
    align = {p: alignment.score(thumbs[p[0]], thumbs[p[1]]) for p in cand}
    copies, others = [p for p in cand if p in true], [p for p in cand if p not in true]
    return {
        "candidates": len(cand),
        "copies": len(copies),
        "cosine": {"min_copy": min(cos[p] for p in copies), "max_other": max(cos[p] for p in others)},
        "alignment": {"min_copy": min(align[p] for p in copies), "max_other": max(align[p] for p in others)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="sample data set (holds sample_truth.json)")
    ap.add_argument("--work", type=Path, required=True, help="work folder after `artclf dedup`")
    ap.add_argument(
        "--separation", action="store_true", help="cosine and alignment scores of the CNN candidates"
    )
    a = ap.parse_args()
    truth = json.loads((a.data / "sample_truth.json").read_text())
    out = separation(truth, a.work) if a.separation else score(truth, manifest.read_manifest(a.work))
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
