"""``artclf dedup --work WORK``: near-duplicate groups across all artists; one copy kept per group.

The Kaggle set holds the same painting photographed twice (another colour cast, another
crop). Three detectors, joined by union-find: exact copies (sha256), near copies
(perceptual hash, mirrored too), re-photographs (CNN embedding cosine similarity, across
all artists); each CNN candidate and each hash pair of images with keypoints is verified on
geometry (``artclf.dedup.geometry``: ORB keypoints, ratio test, RANSAC homography) so that
look-alike works stay apart. Each group keeps its
largest image; a group whose members carry different artists is a possible mislabel and is
kept out of training unless ``--keep-mislabeled``.

Writes ``group`` and ``keep`` into ``WORK/manifest.jsonl`` and ``WORK/dedup/``:
``groups.json`` (members kept first, each with the found pair that ties it in, and every pair),
``report.json``, ``group_<id>.png`` montages of the largest groups and of the groups behind
every artist that loses more than ``--max-loss`` of its images (``report.json``'s ``montages``
lists them, largest group first).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from artclf import manifest
from artclf.atomic import write_json
from artclf.config import stage_main
from artclf.dedup import alignment, features, geometry, montage, phash
from artclf.dedup.config import DedupConfig
from artclf.dedup.groups import connected_groups, explain, ties
from artclf.dedup.neighbors import pairs_above, topk_similar
from artclf.dedup.report import SHOWN, group_json, losses, print_summary, report_json


def _model(cfg: DedupConfig) -> tuple[torch.nn.Module | None, dict | None]:
    if not cfg.use_cnn:
        warnings.warn(
            "--weights none: CNN detector off, re-photographs are found by hashes only", stacklevel=2
        )
        return None, None
    from artclf.weights import build

    model = build(cfg.arch, cfg.weights, num_classes=0).eval()
    ident = {"arch": cfg.arch, "weights": cfg.weights, "image_size": cfg.image_size}
    if Path(cfg.weights).is_file():
        st = Path(cfg.weights).stat()
        ident["file"] = {"bytes": st.st_size, "mtime": int(st.st_mtime)}
    return model, ident


def hash_pairs(h: np.ndarray, hf: np.ndarray, k: int, hash_threshold: int) -> np.ndarray:
    """Pairs among each image's ``k`` nearest hashes within ``hash_threshold`` bits (±1 hashes: a
    dot product); a mirrored copy matches the original's mirrored hash ``hf``."""
    min_dot = phash.BITS - 2 * hash_threshold
    s, i = topk_similar(h, h, k, exclude_self=True)
    sf, i_f = topk_similar(hf, h, k)
    return np.concatenate([pairs_above(s, i, min_dot), pairs_above(sf, i_f, min_dot)])


def cnn_candidates(e: np.ndarray, k: int, cut: float) -> np.ndarray:
    """Pairs among each image's ``k`` nearest embeddings with cosine similarity >= ``cut``."""
    s, i = topk_similar(e, e, k, exclude_self=True)
    return pairs_above(s, i, cut)


def scores(kind: str, pairs: np.ndarray, h: np.ndarray, hf: np.ndarray, e: np.ndarray | None) -> np.ndarray:
    """Each pair's similarity as its detector saw it, for the labels: the embeddings' cosine
    (cnn), or the hashes' dot product over ``BITS`` (1 - 2·Hamming/BITS), mirrored either way
    (hash; a pair is found from either side)."""
    a, b = pairs[:, 0], pairs[:, 1]
    if kind == "cnn":
        return np.einsum("ij,ij->i", e[a], e[b])
    dots = [np.einsum("ij,ij->i", x[a], y[b]) for x, y in ((h, h), (hf, h), (h, hf))]
    return np.maximum.reduce(dots) / phash.BITS


def find_pairs(
    h: np.ndarray,
    hf: np.ndarray,
    thumbs: np.ndarray,
    local: list[geometry.Local],
    e: np.ndarray | None,
    cfg: DedupConfig,
) -> tuple[dict[str, np.ndarray], dict]:
    """Copy pairs over unique images, per detector (hash, cnn), and what verification did.
    Embeddings and hashes alone score distinct paintings alike (one artist's palette and
    brushwork, one motif painted twice); a re-photograph also keeps every mark in its place."""
    hashed = hash_pairs(h, hf, cfg.neighbors, cfg.hash_threshold)
    out, stats = {"hash": hashed}, {}
    if cfg.verify == "geometry":  # without keypoints to test, a hash pair stands
        counts = geometry.verify(hashed, local, cfg.min_inliers, cfg.min_keypoints, max(1, cfg.workers))
        out["hash"] = hashed[(counts >= cfg.min_inliers) | (counts < 0)]
        stats["hash_rejected"] = len(hashed) - len(out["hash"])
    if e is not None:
        cand = cnn_candidates(e, cfg.neighbors, cfg.cnn_cut)
        start = time.perf_counter()
        if cfg.verify == "geometry":  # without keypoints to test, a CNN candidate falls
            counts = geometry.verify(cand, local, cfg.min_inliers, cfg.min_keypoints, max(1, cfg.workers))
            out["cnn"] = cand[counts >= cfg.min_inliers]
            stats["cnn_few_keypoints"] = int((counts < 0).sum())
        elif cfg.verifies:
            out["cnn"] = alignment.verify(cand, thumbs, cfg.align_threshold)
        else:
            out["cnn"] = cand
        seconds = time.perf_counter() - start
        stats.update(
            cnn_candidates=len(cand),
            cnn_rejected=len(cand) - len(out["cnn"]),
            verify_ms_per_pair=round(1000 * seconds / max(1, len(cand)), 3),
        )
    return out, stats


def assign(rows: list[dict], groups: np.ndarray, keep_mislabeled: bool) -> list[dict]:
    """Write ``group``/``keep`` into usable ``rows``: keep the largest of each group; mislabels
    (members of different artists) keep nothing unless asked. Returns multi-member groups,
    largest first, each with its largest (the kept) member first."""
    members: dict[int, list[dict]] = {}
    for r, g in zip(rows, groups, strict=True):
        r["group"], r["keep"] = int(g), False
        members.setdefault(int(g), []).append(r)
    multi = []
    for g, ms in members.items():
        best = max(ms, key=lambda r: (r["width"] * r["height"], r["bytes"], r["path"]))
        artists = sorted({r["artist"] for r in ms})
        if len(artists) == 1 or keep_mislabeled:
            best["keep"] = True
        if len(ms) > 1:
            ms.sort(key=lambda r: r is not best)  # stable: the rest stay in manifest order
            multi.append(
                {
                    "group": g,
                    "size": len(ms),
                    "artists": artists,
                    "mislabel": len(artists) > 1,
                    "kept": best["path"] if best["keep"] else None,
                    "members": ms,
                }
            )
    multi.sort(key=lambda m: (-m["size"], m["group"]))
    return multi


def dedup(cfg: DedupConfig) -> dict | None:
    start = time.perf_counter()
    rows = manifest.read_manifest(cfg.work)
    ok = manifest.usable(rows)
    data_dir, out = manifest.data_dir(cfg.work, cfg.data_dir), cfg.work / "dedup"
    model, model_id = _model(cfg)
    feats = features.Features.load(out, model_id)
    if cfg.merge:
        print(f"dedup: merged {features.merge_parts(out, feats)} parts")
    keys = sorted({r["sha256"] for r in ok})
    path_of = {r["sha256"]: data_dir / r["path"] for r in ok}
    if cfg.part is not None:
        keys = keys[cfg.part :: cfg.num_parts]
    todo = feats.missing(keys)
    if todo:
        features.compute(
            feats,
            todo,
            [path_of[k] for k in todo],
            model,
            cfg.image_size,
            cfg.batch_size,
            cfg.workers,
            save_to=None if cfg.part is not None else out,
        )
    if cfg.part is not None:
        dest = features.part_path(out, cfg.part, cfg.num_parts)
        features.save_part(dest, feats, keys)
        print(f"dedup: part {cfg.part}/{cfg.num_parts}: {len(keys)} images -> {dest}")
        return None
    if todo or cfg.merge:
        feats.save(out)
    t_feat = time.perf_counter() - start

    h, hf, thumbs, e = feats.arrays(keys)
    pairs, verified = find_pairs(h, hf, thumbs, [feats.local[k] for k in keys], e, cfg)
    index = {k: i for i, k in enumerate(keys)}
    unique_groups = connected_groups(len(keys), np.concatenate(list(pairs.values())))
    groups = unique_groups[[index[r["sha256"]] for r in ok]]
    multi = assign(ok, groups, cfg.keep_mislabeled)
    found = ties(keys, {d: (p, scores(d, p, h, hf, e)) for d, p in pairs.items()})
    for m in multi:
        m["why"], m["pairs"] = explain(m["members"], found)
    for r in rows:
        if r["status"] != manifest.OK:
            r["group"], r["keep"] = None, False
    manifest.write_manifest(cfg.work, rows)

    counts = {
        "exact": len(ok) - len(keys),  # files whose bytes another file already has
        **{d: len(p) for d, p in pairs.items()},
        **verified,
    }
    return write_outputs(cfg, ok, multi, counts, data_dir, t_feat, start)


def write_outputs(
    cfg: DedupConfig,
    ok: list[dict],
    multi: list[dict],
    counts: dict,
    data_dir: Path,
    t_feat: float,
    start: float,
) -> dict:
    """groups.json, the montages (the largest groups, and those behind each loss warning),
    report.json, the console summary; returns the report. ``start``: the run's
    ``time.perf_counter()`` at its start; ``t_feat``: seconds its features took."""
    out = cfg.work / "dedup"
    lost = losses(ok, multi, cfg.max_loss)
    write_json(out / "groups.json", [group_json(m) for m in multi])
    warned = {g for w in lost["warnings"] for g in w["groups"][:SHOWN]} if cfg.montages else set()
    drawn = [m for i, m in enumerate(multi) if i < cfg.montages or m["group"] in warned]  # largest first
    shown = montage.write_montages(drawn, data_dir, out)
    seconds = {"features": round(t_feat, 2), "total": round(time.perf_counter() - start, 2)}
    report = report_json(cfg, ok, multi, counts, lost, drawn, seconds)
    write_json(out / "report.json", report)
    print_summary(report, shown)
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main(DedupConfig, dedup, "artclf dedup", __doc__, argv)
