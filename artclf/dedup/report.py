"""What ``artclf dedup`` reports: ``report.json``, ``groups.json`` entries, the console summary,
and the per-artist loss check.

Dedup exists so the test score is honest; it must not eat the data doing it. Every false merge
drops a distinct painting (two, when the merge crosses artists and the group is kept out as a
possible mislabel), and a small class feels it most. So the report counts, per artist, the
images dropped against the images it had, and warns when an artist loses more than
``--max-loss`` (default 10 %), naming the groups that took them: their montages are drawn.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from artclf.dedup import montage

SHOWN = 12  # groups named (and drawn) per warning

if TYPE_CHECKING:
    from pathlib import Path

    from artclf.dedup.config import DedupConfig


def losses(ok: list[dict], multi: list[dict], max_loss: float) -> dict:
    """Images dropped per artist against the images it had -> {"per_artist": {artist: {images,
    dropped, share}} (artists that lost any), "warnings": [{artist, images, dropped, share,
    groups}] for shares above ``max_loss``, largest share first}."""
    had = Counter(r["artist"] for r in ok)
    dropped = Counter(r["artist"] for r in ok if not r["keep"])
    per = {
        a: {"images": had[a], "dropped": d, "share": round(d / had[a], 4)}
        for a, d in sorted(dropped.items(), key=lambda x: (-x[1] / had[x[0]], x[0]))
    }
    groups: dict[str, list[int]] = {}
    for m in multi:
        for r in m["members"]:
            if not r["keep"] and m["group"] not in groups.get(r["artist"], []):
                groups.setdefault(r["artist"], []).append(m["group"])
    warnings = [{"artist": a, **v, "groups": groups[a]} for a, v in per.items() if v["share"] > max_loss]
    return {"max_loss": max_loss, "per_artist": per, "warnings": warnings}


def group_json(m: dict) -> dict:
    """A ``groups.json`` entry: members (kept or largest first), each with the pair that ties it
    in (``by``, ``similarity``, ``with`` another member's path), and every pair found in the group."""
    paths = [r["path"] for r in m["members"]]
    members = [
        {
            "path": r["path"],
            "artist": r["artist"],
            "keep": r["keep"],
            "by": why["by"],
            "similarity": why["similarity"],
            "with": paths[why["with"]],
            "width": r["width"],
            "height": r["height"],
        }
        for r, why in zip(m["members"], m["why"], strict=True)
    ]
    pairs = [{**p, "a": paths[p["a"]], "b": paths[p["b"]]} for p in m["pairs"]]
    return {
        **{k: m[k] for k in ("group", "size", "artists", "mislabel", "kept")},
        "members": members,
        "pairs": pairs,
    }


def report_json(
    cfg: DedupConfig,
    ok: list[dict],
    multi: list[dict],
    pairs: dict,
    lost: dict,
    drawn: list[dict],
    seconds: dict,
) -> dict:
    """``report.json``. ``montages`` lists the drawn groups' PNGs (next to it), largest group
    first: ``[{group, size, file}]``; ``largest_groups`` the ten largest, with their montage
    file or null."""
    files = {m["group"]: montage.file_name(m["group"]) for m in drawn}
    dropped = Counter({a: v["dropped"] for a, v in lost["per_artist"].items()})
    return {
        "images": len(ok),
        "kept": sum(r["keep"] for r in ok),
        "dropped": sum(dropped.values()),
        "groups": len(multi),
        "images_in_groups": sum(m["size"] for m in multi),
        "largest_groups": [
            {"group": m["group"], "size": m["size"], "montage": files.get(m["group"])} for m in multi[:10]
        ],
        "montages": [{"group": m["group"], "size": m["size"], "file": files[m["group"]]} for m in drawn],
        "mislabel_groups": [{"group": m["group"], "artists": m["artists"]} for m in multi if m["mislabel"]],
        "dropped_per_artist": dict(dropped.most_common()),
        "loss": lost,
        "pairs": pairs,
        "detectors": {
            "arch": cfg.arch if cfg.use_cnn else None,
            "weights": cfg.weights,
            "cnn_threshold": cfg.cnn_cut if cfg.use_cnn else None,
            "verify": cfg.verify,  # geometry checks hash pairs too, with or without a CNN
            "min_inliers": cfg.min_inliers if cfg.verify == "geometry" else None,
            "min_keypoints": cfg.min_keypoints if cfg.verify == "geometry" else None,
            "align_threshold": cfg.align_threshold if cfg.use_cnn and cfg.verify == "alignment" else None,
            "hash_threshold": cfg.hash_threshold,
            "neighbors": cfg.neighbors,
        },
        "seconds": seconds,
    }


def print_summary(report: dict, montages: list[Path]) -> None:
    print(
        f"dedup: {report['images']} images, {report['groups']} duplicate groups "
        f"({report['images_in_groups']} images), {report['dropped']} dropped, "
        f"{len(report['mislabel_groups'])} possible mislabels; pairs {report['pairs']}"
    )
    top = ", ".join(f"{a} {n}" for a, n in list(report["dropped_per_artist"].items())[:8])
    print(f"  dropped per artist: {top or 'none'}")
    folder = montages[0].parent if montages else None
    for w in report["loss"]["warnings"]:
        shown = ", ".join(str(g) for g in w["groups"][:SHOWN]) + (" …" if len(w["groups"]) > SHOWN else "")
        print(
            f"  WARNING: {w['artist']} loses {w['dropped']} of {w['images']} images "
            f"({100 * w['share']:.1f} % > {100 * report['loss']['max_loss']:g} %); "
            f"look at groups {shown}" + (f" ({folder}/group_<id>.png)" if folder else "")
        )
    if montages:
        top = ", ".join(f"{m['file']} ({m['size']})" for m in report["montages"][:3])
        print(f"  montages: {folder}/group_*.png ({len(montages)}), largest groups first: {top}")
