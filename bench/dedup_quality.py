"""Dedup quality against the planted truth of a sample data set: pairwise precision and recall.

    python -m bench.dedup_quality --data DIR --work WORK [--separation | --verify-timing N]

Truth groups are closed transitively; a predicted pair is two usable images in one dedup
group. Recall is also given per kind of copy (a pair original–copy counts for the copy's kind),
false pairs per kind of look-alike, and, for a set made with ``--hard-negatives``, the share of
hard-negative pairs merged (two files of different works in one set of look-alikes, copies
included) and the paintings each artist lost: a painting is lost when none of its files is kept
although the truth keeps one (a cross-artist group keeps none by design).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from artclf import manifest
from artclf.sample_data.lookalikes import LOOKS

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
    hard = hard_pairs(truth, set(ok))
    look = {p: kind for kind, pairs in hard.items() for p in pairs}
    out["false_pairs_by_kind"] = dict(sorted(Counter(look.get(p, "other") for p in false).items()))
    out["hard_negatives"] = {
        kind: {"pairs": len(pairs), "merged": len(pairs & pred), "share": len(pairs & pred) / len(pairs)}
        for kind, pairs in hard.items()
        if pairs
    }
    n_hard = sum(len(v) for v in hard.values())
    out["hard_negatives_merged"] = len(set(look) & pred) / n_hard if n_hard else 0.0
    out["lost_per_artist"] = lost_paintings(truth, ok)
    out["false_pairs_sample"] = false[:10]
    out["missed_pairs_sample"] = [(a, kind[a], b, kind[b]) for a, b in sorted(true - pred)[:10]]
    return out


def hard_pairs(truth: dict, usable: set[str]) -> dict[str, set[tuple[str, str]]]:
    """Per look-alike kind, the file pairs of different works in one set (copies included)."""
    files = {g["members"][0]["path"]: [m["path"] for m in g["members"]] for g in truth["duplicate_groups"]}
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for h in truth.get("hard_negatives", []):
        works = [[f for f in files.get(p, [p]) if f in usable] for p in h["members"]]
        for a, b in itertools.combinations(works, 2):
            out[h["kind"]] |= {tuple(sorted((x, y))) for x in a for y in b}
    return dict(out)


def lost_paintings(truth: dict, ok: dict[str, dict]) -> dict[str, dict]:
    """Per artist with a loss: paintings it had (usable, counted once), paintings with no kept file
    although the truth keeps one, and that share; largest share first."""
    group_of = {m["path"]: i for i, g in enumerate(truth["duplicate_groups"]) for m in g["members"]}
    cross = {i for i, g in enumerate(truth["duplicate_groups"]) if g["cross_artist"]}
    works: dict[object, list[dict]] = defaultdict(list)
    for path, r in ok.items():
        works[group_of.get(path, path)].append(r)
    had, lost = Counter(), Counter()
    for w, rows in works.items():
        if w in cross:
            continue
        artist = rows[0]["artist"]
        had[artist] += 1
        lost[artist] += not any(r["keep"] for r in rows)
    out = {a: {"paintings": had[a], "lost": n, "share": round(n / had[a], 4)} for a, n in lost.items() if n}
    return dict(sorted(out.items(), key=lambda x: -x[1]["share"]))


def separation(truth: dict, work: Path, cut: float = 0.80, k: int = 10) -> dict:
    """How well cosine, the aligned-thumbnail score and the geometric inlier count separate copies
    from other pairs, over the CNN candidates (top-k, cosine >= ``cut``) and the hash pairs (the
    default Hamming threshold, plain and mirrored) of the features cached in
    ``work/dedup``; inliers are counted exactly (plain and mirrored), -1 when an image has fewer than
    ``geometry.MIN_KEYPOINTS`` keypoints."""
    from artclf.dedup import DedupConfig, alignment, features, geometry
    from artclf.dedup.stage import cnn_candidates, hash_pairs

    rows = manifest.usable(manifest.read_manifest(work))
    model = json.loads((work / "dedup/embeddings.json").read_text())["model"]
    keys = sorted({r["sha256"] for r in rows})
    feats = features.Features.load(work / "dedup", model)
    h, hf, thumbs, emb = feats.arrays(keys)
    local = [feats.local[k] for k in keys]
    index = {k: i for i, k in enumerate(keys)}
    sha = {r["path"]: r["sha256"] for r in rows}
    groups = [
        [index[sha[m["path"]]] for m in g["members"] if m["path"] in sha] for g in truth["duplicate_groups"]
    ]
    true = {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}
    look = {
        tuple(sorted((index[sha[a]], index[sha[b]]))): kind
        for kind, pairs in hard_pairs(truth, set(sha)).items()
        for a, b in pairs
    }
    hashed = hash_pairs(h, hf, k, DedupConfig().hash_threshold)
    cand = sorted({tuple(p) for p in np.concatenate([cnn_candidates(emb, k, cut), hashed]).tolist()})
    cos = {p: float(emb[p[0]] @ emb[p[1]]) for p in cand}
    align = {p: alignment.score(thumbs[p[0]], thumbs[p[1]]) for p in cand}
    counts = geometry.verify(np.array(cand), local, 0, geometry.MIN_KEYPOINTS)
    inl = dict(zip(cand, counts.tolist(), strict=True))
    copies, others = [p for p in cand if p in true], [p for p in cand if p not in true]
    out = {
        "candidates": len(cand),
        "copies": len(copies),
        "cosine": {"min_copy": min(cos[p] for p in copies), "max_other": max(cos[p] for p in others)},
        "alignment": {"min_copy": min(align[p] for p in copies), "max_other": max(align[p] for p in others)},
    }
    ranked = sorted(inl[p] for p in copies if inl[p] >= 0)
    # inliers as a share of the fewer keypoints of the two: (count, share) per pair
    share = {p: (inl[p], round(inl[p] / max(1, min(local[p[0]].n, local[p[1]].n)), 3)) for p in cand}
    out["inliers"] = {
        "copies_few_keypoints": sum(inl[p] < 0 for p in copies),
        "copy_lowest": ranked[:10],
        "copy_p01": float(np.percentile(ranked, 1)) if ranked else None,
        "copy_lowest_share": sorted((share[p] for p in copies if inl[p] >= 0), key=lambda x: x[1])[:10],
    }
    for kind in ("other", *LOOKS):
        vals = sorted((share[p] for p in others if look.get(p, "other") == kind), reverse=True)
        out["inliers"][kind] = {"pairs": len(vals), "highest": vals[:10]}
    return out


def verify_timing(work: Path, n: int, cut: float = 0.80, k: int = 10) -> dict:
    """ms per pair of ``geometry.verify`` (default thresholds) over the first ``n`` CNN
    candidates of the cache in ``work/dedup``, on 1 and on 2 threads, and of its first step alone
    (``knnMatch`` of the plain descriptors, one thread)."""
    import time

    import cv2

    from artclf.dedup import features, geometry
    from artclf.dedup.stage import cnn_candidates

    model = json.loads((work / "dedup/embeddings.json").read_text())["model"]
    feats = features.Features.load(work / "dedup", model)
    keys = sorted(feats.hash)
    _, _, _, emb = feats.arrays(keys)
    cand = cnn_candidates(emb, k, cut)[:n]
    local = [feats.local[key] for key in keys]
    out: dict = {"pairs": len(cand)}
    for threads in (1, 2):
        start = time.perf_counter()
        geometry.verify(cand, local, threads=threads)
        out[f"ms_per_pair_{threads}_threads"] = round(1000 * (time.perf_counter() - start) / len(cand), 3)
    matcher, start = cv2.BFMatcher(cv2.NORM_HAMMING), time.perf_counter()
    for a, b in cand.tolist():
        matcher.knnMatch(local[a].desc, local[b].desc, k=2)
    out["ms_knn_match_per_pair"] = round(1000 * (time.perf_counter() - start) / len(cand), 3)
    out["keypoints_mean"] = round(float(np.mean([x.n for x in local])), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="sample data set (holds sample_truth.json)")
    ap.add_argument("--work", type=Path, required=True, help="work folder after `artclf dedup`")
    ap.add_argument(
        "--separation",
        action="store_true",
        help="cosine, alignment score and inlier count of the CNN candidates and hash pairs, by truth",
    )
    ap.add_argument(
        "--verify-timing", type=int, metavar="N", help="time the verification of N CNN candidates"
    )
    a = ap.parse_args()
    truth = json.loads((a.data / "sample_truth.json").read_text())
    if a.verify_timing:
        out = verify_timing(a.work, a.verify_timing)
    elif a.separation:
        out = separation(truth, a.work)
    else:
        out = score(truth, manifest.read_manifest(a.work))
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
