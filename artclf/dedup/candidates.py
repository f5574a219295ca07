"""``artclf dedup --pairs --num-parts n``: the candidate search, and its split into n verification shares.

Candidates come from a blocked top-k search (``artclf.dedup.neighbors``) over every image's
hashes (and mirrored hashes) and CNN embeddings: cheap next to verifying them. The pairs, each
with the detector that found it and its similarity, are sorted by (a, b) and cut into n shares of
equal numbers of distinct pairs (a pair found by both detectors stays in one share, and is
verified once). Each share file also says where the keypoints of the images it touches lie in
the feature store, so a verification part (``artclf.dedup.verified``) reads nothing else.

Files, in ``WORK/dedup/pairs/``: ``<plan>/share-i-of-n.npz`` and, last, ``plan.json`` (the plan's
id, n, the images and settings it was made for). The id digests the keys, the settings, the
model and the chunks read; a rerun with the same inputs finds its plan made and stops.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from artclf.atomic import atomic_open, write_json
from artclf.dedup import phash, store
from artclf.dedup.config import DedupConfig
from artclf.dedup.neighbors import pairs_above, topk_similar
from artclf.errors import ArtclfError

KINDS = ("hash", "cnn")  # detector codes in the pair files: 0, 1


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
        return np.einsum("ij,ij->i", e[a].astype(np.float32), e[b].astype(np.float32))
    dots = [np.einsum("ij,ij->i", x[a], y[b]) for x, y in ((h, h), (hf, h), (h, hf))]
    return np.maximum.reduce(dots) / phash.BITS


def settings(cfg: DedupConfig, model_id: dict | None) -> dict:
    """What the pairs and their verdicts depend on besides the images."""
    return {
        "model": model_id,
        "neighbors": cfg.neighbors,
        "hash_threshold": cfg.hash_threshold,
        "cnn_cut": cfg.cnn_cut,
        "verify": cfg.verify,
        "min_inliers": cfg.min_inliers,
        "min_keypoints": cfg.min_keypoints,
        "align_threshold": cfg.align_threshold,
    }


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def folder_of(work: Path) -> Path:
    return work / "dedup" / "pairs"


def share_path(plan_dir: Path, part: int, n: int, what: str = "share") -> Path:
    return plan_dir / f"{what}-{part:05d}-of-{n:05d}.npz"


def distinct(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For rows sorted by (a, b): True where a row starts a new pair (a, b)."""
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return first


def read_plan(work: Path) -> tuple[dict, Path]:
    """(plan.json, the plan's folder); a clear error when ``--pairs`` has not run."""
    path = folder_of(work) / "plan.json"
    if not path.is_file():
        raise ArtclfError(
            f"{path}: no candidate pairs yet; run `artclf dedup --pairs --num-parts n` after the "
            "feature parts (or `artclf dedup` in one process)"
        )
    plan = json.loads(path.read_text())
    return plan, folder_of(work) / plan["id"]


def plan(cfg: DedupConfig, keys: list[str], model_id: dict | None, n: int) -> dict:
    """Find the candidate pairs of ``keys`` (sorted sha256) and write them as n shares."""
    start = time.perf_counter()
    ix = store.index(store.folder_of(cfg.work), model_id, keys)
    if ix.missing:
        raise ArtclfError(
            f"{store.folder_of(cfg.work)}: {len(ix.missing)} of {len(keys)} images have no features "
            f"(e.g. sha256 {ix.missing[0]}); run the missing `artclf dedup --part i --num-parts n` "
            "(a part computes only what its chunks lack) with the same --arch/--weights/--image-size"
        )
    made = settings(cfg, model_id)
    ident = {"keys": keys_digest(keys), "settings": made, "chunks": ix.names, "num_parts": n}
    pid = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    out = folder_of(cfg.work) / pid
    old = folder_of(cfg.work) / "plan.json"
    before = json.loads(old.read_text()) if old.is_file() else {}
    if before.get("id") == pid and all(share_path(out, i, n).is_file() for i in range(n)):
        print(f"dedup: candidate pairs of plan {pid} already made ({n} shares)")
        return before
    h, hf, e = store.search_arrays(ix, model_id is not None)
    found = {"hash": hash_pairs(h, hf, cfg.neighbors, cfg.hash_threshold)}
    if e is not None:
        found["cnn"] = cnn_candidates(e, cfg.neighbors, cfg.cnn_cut)
    rows = [
        np.column_stack([p, np.full(len(p), KINDS.index(kind))]).astype(np.int64) for kind, p in found.items()
    ]
    score = np.concatenate([scores(kind, p, h, hf, e) for kind, p in found.items()]).astype(np.float32)
    del h, hf, e
    abk = np.concatenate(rows)
    order = np.lexsort((abk[:, 2], abk[:, 1], abk[:, 0]))
    abk, score = abk[order], score[order]
    first = distinct(abk[:, 0], abk[:, 1])
    pair_id = np.cumsum(first) - 1  # distinct (a, b) per row
    pairs = int(first.sum())
    edges = np.searchsorted(pair_id, [i * pairs // n for i in range(n + 1)]).tolist()
    edges[-1] = len(abk)
    for i in range(n):
        _write_share(share_path(out, i, n), abk[edges[i] : edges[i + 1]], score[edges[i] : edges[i + 1]], ix)
    info = {
        "id": pid,
        "num_parts": n,
        "images": len(keys),
        "keys_sha256": ident["keys"],
        "settings": made,
        "chunks": ix.names,
        "pairs": {kind: len(p) for kind, p in found.items()},
        "distinct_pairs": pairs,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(old, info)  # last: the plan is made
    print(f"dedup: {info['distinct_pairs']} candidate pairs ({info['pairs']}) -> {n} shares in {out}")
    return info


def _write_share(path: Path, abk: np.ndarray, score: np.ndarray, ix: store.Index) -> None:
    touched = np.unique(abk[:, :2]) if len(abk) else np.zeros(0, np.int64)
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            a=abk[:, 0],
            b=abk[:, 1],
            kind=abk[:, 2].astype(np.int8),
            score=score,
            images=touched,
            chunk=ix.chunk[touched],
            offset=ix.offset[touched],
            counts=ix.counts[touched].reshape(-1, 2),
        )
