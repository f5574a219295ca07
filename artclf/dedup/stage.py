"""``artclf dedup --work WORK``: near-duplicate groups across all artists; one copy kept per group.

The Kaggle set holds the same painting photographed twice (another colour cast, another
crop). Three detectors, joined by union-find: exact copies (sha256), near copies
(perceptual hash, mirrored too), re-photographs (CNN embedding cosine similarity, across
all artists); each CNN candidate and each hash pair of images with keypoints is verified on
geometry (``artclf.dedup.geometry``: ORB keypoints, ratio test, RANSAC homography) so that
look-alike works stay apart. Each group keeps its
largest image; a group whose members carry different artists is a possible mislabel and is
kept out of training unless ``--keep-mislabeled``.

Four steps, one process or one job each (docs/design.md, "Dedup at scale"): features into the
store (``--part i --num-parts n``: an array), the candidate search cut into shares (``--pairs
--num-parts m``), their verification (``--verify-part j --num-parts m``: an array), the merge
(``--merge``); without those flags one process runs all four.

The merge writes ``group`` and ``keep`` into ``WORK/manifest.jsonl`` and ``WORK/dedup/``:
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
from artclf.dedup import candidates, features, montage, store, verified
from artclf.dedup.config import DedupConfig
from artclf.dedup.groups import connected_groups, explain, ties
from artclf.dedup.report import SHOWN, group_json, losses, print_summary, report_json


def model_id(cfg: DedupConfig) -> dict | None:
    """What the embeddings depend on (None: no CNN); the file's size and mtime for a local file."""
    if not cfg.use_cnn:
        return None
    ident = {"arch": cfg.arch, "weights": cfg.weights, "image_size": cfg.image_size}
    if Path(cfg.weights).is_file():
        st = Path(cfg.weights).stat()
        ident["file"] = {"bytes": st.st_size, "mtime": int(st.st_mtime)}
    return ident


def _model(cfg: DedupConfig) -> torch.nn.Module | None:
    if not cfg.use_cnn:
        return None
    from artclf.weights import build

    return build(cfg.arch, cfg.weights, num_classes=0).eval()


def compute_features(cfg: DedupConfig, keys: list[str], paths: list[Path], mid: dict | None) -> int:
    """Features of the ``keys`` no chunk of the store holds yet; returns how many were computed."""
    folder = store.folder_of(cfg.work)
    old = [p for p in ("hashes.npz", "embeddings.npy", "parts") if (folder.parent / p).exists()]
    if old:
        print(f"dedup: {folder.parent}: {', '.join(old)} (an older artclf's cache) are not read; delete them")
    have = store.done(folder, mid, set(keys))
    todo = [i for i, k in enumerate(keys) if k not in have]
    who = "all" if cfg.part is None else f"part {cfg.part}/{cfg.num_parts}"
    print(f"dedup: features, {who}: {len(keys)} images, {len(have)} in the store, computing {len(todo)}")
    if todo:
        prefix = "all" if cfg.part is None else f"part-{cfg.part:05d}-of-{cfg.num_parts:05d}"
        writer = store.Writer(folder, prefix, mid, cfg.chunk_images)
        features.compute(
            writer,
            [keys[i] for i in todo],
            [paths[i] for i in todo],
            _model(cfg),
            cfg.image_size,
            cfg.batch_size,
            cfg.workers,
        )
    return len(todo)


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
    """One step (``--part``, ``--pairs``, ``--verify-part``, ``--merge``), or all in one process;
    the merge (and the one process) returns the report."""
    start = time.perf_counter()
    mid = model_id(cfg)
    if cfg.verify_part is not None:  # its share says everything it needs: no manifest
        verified.verify_part(cfg, cfg.verify_part, cfg.num_parts, mid)
        return None
    rows = manifest.read_manifest(cfg.work)
    ok = manifest.usable(rows)
    data_dir = manifest.data_dir(cfg.work, cfg.data_dir)
    keys = sorted({r["sha256"] for r in ok})
    if mid is None and not cfg.merge:
        warnings.warn(
            "--weights none: CNN detector off, re-photographs are found by hashes only", stacklevel=2
        )
    whole = cfg.part is None and not (cfg.pairs or cfg.merge)
    if cfg.part is not None or whole:
        mine = keys if whole else keys[cfg.part :: cfg.num_parts]
        path_of = {r["sha256"]: data_dir / r["path"] for r in ok}
        computed = compute_features(cfg, mine, [path_of[k] for k in mine], mid)
        if not whole:
            return {"images": len(mine), "computed": computed}
    t_feat = time.perf_counter() - start
    if cfg.pairs or whole:
        candidates.plan(cfg, keys, mid, cfg.num_parts if cfg.pairs else 1)
    if cfg.pairs:
        return None
    if whole:
        verified.verify_part(cfg, 0, 1, mid)
    pairs, counts, steps = verified.merged(cfg, keys, mid)
    index = {k: i for i, k in enumerate(keys)}
    unique_groups = connected_groups(len(keys), np.concatenate([p for p, _ in pairs.values()]))
    groups = unique_groups[[index[r["sha256"]] for r in ok]]
    multi = assign(ok, groups, cfg.keep_mislabeled)
    found = ties(keys, pairs)
    for m in multi:
        m["why"], m["pairs"] = explain(m["members"], found)
    for r in rows:
        if r["status"] != manifest.OK:
            r["group"], r["keep"] = None, False
    manifest.write_manifest(cfg.work, rows)

    counts = {
        "exact": len(ok) - len(keys),  # files whose bytes another file already has
        **{d: len(p) for d, (p, _) in pairs.items()},
        **counts,
    }
    seconds = {"features": round(t_feat, 2), **steps}
    return write_outputs(cfg, ok, multi, counts, data_dir, seconds, start)


def write_outputs(
    cfg: DedupConfig,
    ok: list[dict],
    multi: list[dict],
    counts: dict,
    data_dir: Path,
    seconds: dict,
    start: float,
) -> dict:
    """groups.json, the montages (the largest groups, and those behind each loss warning),
    report.json, the console summary; returns the report. ``start``: the run's
    ``time.perf_counter()`` at its start; ``seconds``: what its steps took (features: in this
    process; pairs, verify: as their files say, the parts summed)."""
    out = cfg.work / "dedup"
    lost = losses(ok, multi, cfg.max_loss)
    write_json(out / "groups.json", [group_json(m) for m in multi])
    warned = {g for w in lost["warnings"] for g in w["groups"][:SHOWN]} if cfg.montages else set()
    drawn = [m for i, m in enumerate(multi) if i < cfg.montages or m["group"] in warned]  # largest first
    shown = montage.write_montages(drawn, data_dir, out)
    seconds = {**seconds, "total": round(time.perf_counter() - start, 2)}
    report = report_json(cfg, ok, multi, counts, lost, drawn, seconds)
    write_json(out / "report.json", report)
    print_summary(report, shown)
    return report


def main(argv: list[str] | None = None) -> int:
    return stage_main(DedupConfig, dedup, "artclf dedup", __doc__, argv)
