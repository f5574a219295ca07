"""``artclf dedup --verify-part i --num-parts n``: verify one share of the candidate pairs; and the
merge's read of every part's verdicts.

A share's distinct pairs are verified in batches of ``--verify-batch``: a batch reads the
thumbnails and keypoints of the images it touches from the feature store (seek + read), verifies
its pairs, and writes its verdicts (``verified-i-of-n-batches-of-B/k.npy``) before the next begins. So
a part holds one batch's keypoints whatever N is, and a rerun or requeued part verifies only the
batches it had not written. Last it writes ``verified-i-of-n.npz``: the pairs that stand, each
with its detector and similarity, and its counts. The merge reads only those files.

Verdicts per pair: ``--verify geometry``: inliers (-1: an image with too few keypoints; then a
hash pair stands and a CNN candidate falls); ``alignment``: 1/0 for CNN candidates, hash pairs
stand; ``none``: every pair stands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from artclf.atomic import atomic_open
from artclf.dedup import alignment, geometry, store
from artclf.dedup.candidates import (
    KINDS,
    distinct,
    folder_of,
    keys_digest,
    read_plan,
    settings,
    share_path,
)
from artclf.dedup.config import DedupConfig
from artclf.errors import ArtclfError


def check(plan: dict, cfg: DedupConfig, model_id: dict | None) -> None:
    """The step's settings must be those the plan was made with."""
    mine = settings(cfg, model_id)
    differ = sorted(k for k in mine if mine[k] != plan["settings"].get(k))
    if differ:
        raise ArtclfError(
            f"{_plan_json(cfg)}: the candidate pairs were made with other settings ({', '.join(differ)}: "
            f"{[plan['settings'].get(k) for k in differ]}, this run {[mine[k] for k in differ]}); pass "
            "the same flags to every dedup step, or rerun `artclf dedup --pairs` and the verification parts"
        )


def _plan_json(cfg: DedupConfig) -> Path:
    return folder_of(cfg.work) / "plan.json"


def verify_part(cfg: DedupConfig, part: int, n: int, model_id: dict | None) -> dict:
    """Verify share ``part`` of ``n``; returns its counts (and what this run computed)."""
    plan, plan_dir = read_plan(cfg.work)
    if plan["num_parts"] != n:
        raise ArtclfError(
            f"{_plan_json(cfg)}: the pairs were cut into {plan['num_parts']} shares, not --num-parts {n}; "
            f"use --num-parts {plan['num_parts']}, or rerun `artclf dedup --pairs --num-parts {n}`"
        )
    check(plan, cfg, model_id)
    out = share_path(plan_dir, part, n, "verified")
    if out.is_file():
        print(f"dedup: verification part {part}/{n} already done ({out})")
        return {"computed": 0}
    start = time.perf_counter()
    with np.load(share_path(plan_dir, part, n)) as z:
        share = {k: z[k] for k in z.files}
    a, b, kind = share["a"], share["b"], share["kind"]
    first = distinct(a, b)
    pair_of = np.cumsum(first) - 1
    da, db = a[first], b[first]
    verdict = np.ones(len(da), np.int64)
    if cfg.verify == "geometry":
        need = np.ones(len(da), bool)
    elif cfg.verify == "alignment":
        need = np.zeros(len(da), bool)
        need[pair_of[kind == KINDS.index("cnn")]] = cfg.verifies
    else:
        need = np.zeros(len(da), bool)
    todo = np.flatnonzero(need)
    computed = 0
    batches = plan_dir / f"{out.stem}-batches-of-{cfg.verify_batch}"
    for k, lo in enumerate(range(0, len(todo), cfg.verify_batch)):
        sel = todo[lo : lo + cfg.verify_batch]
        path = batches / f"{k:06d}.npy"
        if path.is_file():
            verdict[sel] = np.load(path)
            continue
        v = _verify_batch(cfg, plan["chunks"], share, da[sel], db[sel])
        with atomic_open(path, "wb") as f:
            np.save(f, v)
        verdict[sel], computed = v, computed + len(sel)
    ok, stats = verdicts(cfg, kind, verdict[pair_of], plan["settings"]["model"] is not None)
    seconds = time.perf_counter() - start
    with atomic_open(out, "wb") as f:
        np.savez(
            f,
            a=a[ok],
            b=b[ok],
            kind=kind[ok],
            score=share["score"][ok],
            stats=np.array(json.dumps(stats)),
            seconds=np.array(seconds),
            computed=np.array(computed),
        )
    print(
        f"dedup: verification part {part}/{n}: {len(da)} distinct pairs, verified {computed} now "
        f"({len(todo) - computed} read back), {int(ok.sum())} of {len(a)} stand -> {out}"
    )
    return {**stats, "computed": computed}


def _verify_batch(
    cfg: DedupConfig, names: list[str], share: dict, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Verdicts of pairs (a, b) (global image positions): their images read from the store."""
    mine = np.unique(np.concatenate([a, b]))
    at = np.searchsorted(share["images"], mine)
    thumbs, local = store.read_local(
        store.folder_of(cfg.work), names, share["chunk"][at], share["offset"][at], share["counts"][at]
    )
    pairs = np.column_stack([np.searchsorted(mine, a), np.searchsorted(mine, b)])
    if cfg.verify == "geometry":
        return geometry.verify(pairs, local, cfg.min_inliers, cfg.min_keypoints, max(1, cfg.workers))
    return alignment.passes(pairs, thumbs, cfg.align_threshold).astype(np.int64)


def verdicts(cfg: DedupConfig, kind: np.ndarray, v: np.ndarray, cnn: bool) -> tuple[np.ndarray, dict]:
    """Which rows stand, and the counts the report shows."""
    is_hash, is_cnn = kind == KINDS.index("hash"), kind == KINDS.index("cnn")
    ok = np.ones(len(kind), bool)
    stats = {}
    if cfg.verify == "geometry":  # without keypoints to test, a hash pair stands, a CNN candidate falls
        ok = np.where(is_hash, (v >= cfg.min_inliers) | (v < 0), v >= cfg.min_inliers)
        stats["hash_rejected"] = int((is_hash & ~ok).sum())
    elif cfg.verify == "alignment":
        ok = is_hash | (v == 1)
    if cnn:
        stats.update(cnn_candidates=int(is_cnn.sum()), cnn_rejected=int((is_cnn & ~ok).sum()))
        if cfg.verify == "geometry":
            stats["cnn_few_keypoints"] = int((is_cnn & (v < 0)).sum())
    return ok, stats


def merged(
    cfg: DedupConfig, keys: list[str], model_id: dict | None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict, dict]:
    """Every verification part's standing pairs, per detector ``(pairs, similarities)`` in (a, b)
    order; the summed counts (with the verification's ms per pair); the seconds the candidate
    search and the verification parts (summed) took."""
    plan, plan_dir = read_plan(cfg.work)
    if plan["keys_sha256"] != keys_digest(keys):
        raise ArtclfError(
            f"{_plan_json(cfg)}: the pairs were found for another set of images ({plan['images']}, now "
            f"{len(keys)}: the manifest changed); rerun `artclf dedup --pairs` and the verification parts"
        )
    check(plan, cfg, model_id)
    n = plan["num_parts"]
    missing = [i for i in range(n) if not share_path(plan_dir, i, n, "verified").is_file()]
    if missing:
        raise ArtclfError(
            f"{plan_dir}: verification part(s) {missing} of {n} not done; run "
            f"`artclf dedup --verify-part i --num-parts {n}` for each"
        )
    rows, stats, seconds, computed = [], {}, 0.0, 0
    for i in range(n):
        with np.load(share_path(plan_dir, i, n, "verified")) as z:
            rows.append((z["a"], z["b"], z["kind"], z["score"]))
            for k, v in json.loads(str(z["stats"])).items():
                stats[k] = stats.get(k, 0) + v
            seconds, computed = seconds + float(z["seconds"]), computed + int(z["computed"])
    a, b, kind, score = (np.concatenate(c) for c in zip(*rows, strict=True))
    found = {}
    for kind_name in plan["pairs"]:
        sel = kind == KINDS.index(kind_name)
        found[kind_name] = (np.column_stack([a[sel], b[sel]]).reshape(-1, 2), score[sel].astype(np.float64))
    if plan["settings"]["model"] is not None:
        stats["verify_ms_per_pair"] = round(1000 * seconds / max(1, computed), 3)
    return found, stats, {"pairs": plan["seconds"], "verify": round(seconds, 2)}
