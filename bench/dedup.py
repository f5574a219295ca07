"""dedup at scale (issue 31): the four steps of ``artclf dedup`` on synthetic work folders of N
images, each step in a fresh process, with n = 1, 2, 4 parts; and the feature-extraction rate.

    python -m bench.dedup --sizes 10000,100000 [--parts 1,2,4] [--pairs-per-image 0.3]
        [--extrapolate 1000000] [--images 256] [--weights W] [--tmp DIR]

Per N it writes a work folder as ingest and the feature parts would leave it (``manifest.jsonl``,
``ingest_report.json``, the feature store through the real ``store.Writer``: hashes, 2048-d unit
embeddings, thumbnails, 500 + 500 keypoints per image) with planted truth: true copies (keypoints
the original's under a similarity transform plus noise, descriptors a few bits off, embedding
cosine > 0.9, hashes a few bits off; a quarter of them mirrored) and look-alike clusters
(embedding cosine ~0.86, unrelated keypoints: verification must reject them). Then, per n:
``--pairs --num-parts n`` (on a fresh ``pairs/`` folder), the n ``--verify-part i`` one after
another, ``--merge --montages 0``. Each step's peak RSS is VmHWM, reset after imports; its bytes
written are ``/proc/self/io`` wchar. The merged groups must give the planted pairs back exactly
(precision and recall 1.0) and the same ``groups.json`` for every n, or the bench fails: the
figures would mean nothing. The features step is timed writing only; decoding real images is
:func:`feature_rate`'s (img/s, independent of N).

``--pairs-per-image`` (candidate pairs, default 0.3; the Kaggle set has ~7, this layout gives at
most ~5): the candidate search, run once per n, scores every pair of images and is ~17 of the
100k run's minutes on 2 cores, so verification is held to ~1.5 min per n there (~3 ms a pair)
and the run fits in ~25 min. Ratios per part and memory do not depend on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

COPY_COS, LOOK_COS = 0.95, 0.86  # copy: cos 0.975 to its original, 0.95 to a sibling; look-alikes
HASH_FLIPS, DESC_FLIPS = 4, 8  # bits a copy's hash (of 128) and each descriptor (of 256) differ by
KEPT, NOISE_PX = 0.6, 0.5  # share of the original's keypoints a copy keeps; their jitter at 512 px
SIDE = (512, 384)  # px: keypoints lie on the 512-px grayscale copy (geometry.SIDE)
KP = 500  # keypoints per image and per mirror image (geometry.N_FEATURES)
PHOTO = {"mode": "RGB", "format": "JPEG", "orientation": 1}  # every synthetic manifest row's


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns that RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def wchar() -> int:
    """Bytes this process has written (files, pipes) so far."""
    lines = Path("/proc/self/io").read_text().splitlines()
    return next(int(x.split()[1]) for x in lines if x.startswith("wchar:"))


def feature_rate(arch: str, weights: str, images: int) -> dict:
    """img/s of decode + hashes + keypoints + CNN features over sample-data images, written to a
    feature store (one process, 2 workers)."""
    from artclf.dedup import features, store
    from artclf.sample_data import SampleDataConfig, generate
    from artclf.weights import build

    with tempfile.TemporaryDirectory() as tmp:
        generate(
            SampleDataConfig(
                out=Path(tmp) / "d", scale=images / 8446 * 1.2, seed=1, max_side=1024, quirks=False
            )
        )
        paths = sorted((Path(tmp) / "d/images/images").rglob("*.jpg"))[:images]
        model = build(arch, weights, num_classes=0).eval() if weights != "none" else None
        (Path(tmp) / "store").mkdir()
        writer = store.Writer(Path(tmp) / "store", "all", {"arch": arch} if model is not None else None)
        keys = [str(i) for i in range(len(paths))]
        t = time.perf_counter()
        features.compute(writer, keys, paths, model, 224, 32, 2)
        dt = time.perf_counter() - t
    name = arch if model is not None else "hashes only"
    return {"arch": name, "images": len(paths), "images_per_s": round(len(paths) / dt, 1)}


@dataclass(frozen=True)
class Layout:
    """Who is what among N synthetic images: ``orig[i]`` the original image i copies (-1: none),
    ``mirrored[i]`` a mirrored copy, ``cluster[i]`` its look-alike cluster (-1: none); copy groups
    are ``groups`` (original first)."""

    n: int
    orig: np.ndarray
    mirrored: np.ndarray
    cluster: np.ndarray
    groups: list[list[int]]
    true_pairs: int  # pairs within the copy groups


def layout(n: int, copy_share: float, pairs_per_image: float) -> Layout:
    """Copy groups of 2 and 3 (alternately) first, then look-alike clusters of the smallest size
    (3..11, all within the top-10 search) that gives ``pairs_per_image`` distinct candidate pairs
    per image in all, then singletons."""
    orig, cluster = np.full(n, -1), np.full(n, -1)
    mirrored = np.zeros(n, bool)
    groups, i, copies = [], 0, 0
    while copies < round(copy_share * n) and i + 3 <= n:
        size = 2 + len(groups) % 2
        groups.append(list(range(i, i + size)))
        orig[i + 1 : i + size] = i
        copies, i = copies + size - 1, i + size
    mirrored[np.flatnonzero(orig >= 0)[::4]] = True
    true_pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    need, free = max(0.0, pairs_per_image * n - true_pairs), n - i
    size = next((s for s in range(3, 12) if (s - 1) / 2 * free >= need), 11)
    count = min(round(need / (size * (size - 1) / 2)), free // size)
    cluster[i : i + count * size] = np.repeat(np.arange(count), size)
    return Layout(n, orig, mirrored, cluster, groups, true_pairs)


def key(seed: int, i: int) -> str:
    return hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest()


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim, dtype=np.float32)
    return v / np.linalg.norm(v)


def _mix(base: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine sqrt(rho) to ``base`` (two of them: rho to each other)."""
    u = _unit(rng, len(base))
    u -= (u @ base) * base
    return np.sqrt(rho) * base + np.sqrt(1 - rho) * u / np.linalg.norm(u)


def _flip_bits(x: np.ndarray, flips: int, rng: np.random.Generator) -> np.ndarray:
    """Each row of packed bits ``x`` (uint8) with ``flips`` bits flipped."""
    mask = np.zeros((len(x), x.shape[1] * 8), bool)
    mask[np.arange(len(x))[:, None], rng.integers(0, mask.shape[1], (len(x), flips))] = True
    return x ^ np.packbits(mask, axis=1)


def _keypoints(rng: np.random.Generator, k: int = KP) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, SIDE, (k, 2)).astype(np.float32), rng.integers(0, 256, (k, 32), np.uint8)


def _moved(xy: np.ndarray, desc: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A re-photograph's keypoints: KEPT of the original's under a similarity transform (scale
    0.8-1.25, turned up to 15°, shifted) plus jitter, descriptors a few bits off; the rest new."""
    keep = rng.random(len(xy)) < KEPT
    s, a = np.exp(rng.uniform(np.log(0.8), np.log(1.25))), np.deg2rad(rng.uniform(-15, 15))
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array(SIDE) / 2
    moved = (xy[keep] - centre) @ rot.T + centre + rng.uniform(-15, 15, 2)
    new_xy, new_desc = _keypoints(rng, len(xy) - int(keep.sum()))
    out_xy = np.concatenate([moved + rng.normal(0, NOISE_PX, moved.shape), new_xy])
    out_desc = np.concatenate([_flip_bits(desc[keep], DESC_FLIPS, rng), new_desc])
    order = rng.permutation(len(out_xy))
    return out_xy[order], out_desc[order]


def image_features(lay: Layout, i: int, dim: int, seed: int) -> tuple:
    """(hash, mirrored hash, thumbnail, geometry.Local, embedding) of image i: a pure function
    of (i, seed), so a copy recomputes its original's."""
    from artclf.dedup import alignment, geometry

    o = int(lay.orig[i])
    src = i if o < 0 else o
    rng = np.random.default_rng([seed, 0, src])
    h, hf = (rng.integers(0, 2, (2, 128)) * 2 - 1).astype(np.int8)
    (xy, desc), (xy_m, desc_m) = _keypoints(rng), _keypoints(rng)
    if lay.cluster[src] >= 0:
        centre = _unit(np.random.default_rng([seed, 1, int(lay.cluster[src])]), dim)
        e = _mix(centre, LOOK_COS, rng)
    else:
        e = _unit(rng, dim)
    if o >= 0:
        rng = np.random.default_rng([seed, 2, i])
        bits = np.unpackbits(_flip_bits(np.packbits(np.stack([h, hf]) > 0, axis=1), HASH_FLIPS, rng), axis=1)
        h, hf = bits.astype(np.int8) * 2 - 1
        if lay.mirrored[i]:  # the copy's plain view is the original's mirror view, and back
            h, hf, xy, desc, xy_m, desc_m = hf, h, xy_m, desc_m, xy, desc
        (xy, desc), (xy_m, desc_m) = _moved(xy, desc, rng), _moved(xy_m, desc_m, rng)
        e = _mix(e, COPY_COS, rng)
    thumb = rng.integers(0, 256, (alignment.THUMB, alignment.THUMB, 3), np.uint8)
    local = geometry.Local(xy.astype(np.float16), desc, xy_m.astype(np.float16), desc_m)
    return h, hf, thumb, local, e


def write_manifest(work: Path, lay: Layout, seed: int) -> None:
    """manifest.jsonl and ingest_report.json shaped like ingest's (a copy keeps its original's
    artist; 100 images per artist)."""
    from artclf import manifest
    from artclf.atomic import write_json

    rng = np.random.default_rng([seed, 3])
    artists, rows = max(1, lay.n // 100), []
    for i in range(lay.n):
        a = int(lay.orig[i] if lay.orig[i] >= 0 else i) % artists
        name = f"Artist_{a:05d}"
        w, h = (int(x) for x in rng.integers(300, 3000, 2))
        path, size = f"images/images/{name}/{name}_{i}.jpg", int(w * h * rng.uniform(0.1, 0.4))
        row = {"path": path, "artist": name.replace("_", " "), "label": a, "width": w, "height": h}
        rows.append({**row, **PHOTO, "bytes": size, "sha256": key(seed, i), "status": "ok"})
    work.mkdir(parents=True, exist_ok=True)
    manifest.write_manifest(work, rows)
    write_json(work / "ingest_report.json", {"data_dir": str(work / "data"), "usable": lay.n})


def config(work: Path, **step):
    """The settings every step runs with (defaults: resnet50 ImageNet, geometry); ``step``: the
    step's flags."""
    from artclf.dedup.config import DedupConfig

    return DedupConfig(work=work, montages=0, **step)


def write_features(work: Path, lay: Layout, dim: int, seed: int) -> dict:
    """The feature store of N images through ``store.Writer``, timed writing only."""
    from artclf.dedup import stage, store

    cfg = config(work)
    folder = store.folder_of(work)
    folder.mkdir(parents=True, exist_ok=True)
    writer = store.Writer(folder, "all", stage.model_id(cfg), cfg.chunk_images)
    make = write = 0.0
    for lo in range(0, lay.n, cfg.chunk_images):
        t = time.perf_counter()
        feats = [image_features(lay, i, dim, seed) for i in range(lo, min(lay.n, lo + cfg.chunk_images))]
        h, hf, thumbs, local, e = zip(*feats, strict=True)
        keys = [key(seed, i) for i in range(lo, lo + len(feats))]
        t2 = time.perf_counter()
        writer.add(keys, np.stack(h), np.stack(hf), np.stack(thumbs), list(local), np.stack(e))
        make, write = make + t2 - t, write + time.perf_counter() - t2
    t = time.perf_counter()
    writer.close()
    write += time.perf_counter() - t
    files = sum(p.stat().st_size for p in folder.iterdir())
    return {"seconds": write, "generate_s": make, "files_bytes": files}


def child(job: dict) -> dict:
    """Runs in a fresh process: one job (the features, or one dedup step) measured alone."""
    import torch

    from artclf.dedup.stage import dedup

    torch.zeros(1)  # torch's start-up memory belongs to the baseline
    work = Path(job["work"])
    base, w0 = reset_peak(), wchar()
    t = time.perf_counter()
    if job["step"] == "features":
        lay = layout(job["n"], job["copies"], job["pairs_per_image"])
        out = write_features(work, lay, job["dim"], job["seed"])
    else:
        n = job.get("num_parts", 1)
        flags = {
            "pairs": {"pairs": True},
            "verify": {"verify_part": job.get("part")},
            "merge": {"merge": True},
        }
        dedup(config(work, num_parts=n, **flags[job["step"]]))
        out = {"seconds": time.perf_counter() - t}
    peak = _status_mib("VmHWM")
    return {**out, "wchar": wchar() - w0, "start_mib": base, "peak_mib": peak - base}


def run_child(job: dict) -> dict:
    cmd = [sys.executable, "-m", "bench.dedup", "--child", json.dumps(job)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"bench.dedup: {job} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    what = f"{job['step']} {job.get('part', 0) + 1}/{job.get('num_parts', 1)}"
    print(f"  N={job['n']} {what}: {out['seconds']:.1f} s", file=sys.stderr, flush=True)
    return out


def summary(results: list[dict]) -> dict:
    """One step over its parts: each part's seconds, the largest peaks, the bytes summed."""
    out = {k: max(r[k] for r in results) for k in ("peak_mib", "start_mib")}
    return {**out, "times": [r["seconds"] for r in results], "wchar": sum(r["wchar"] for r in results)}


def truth(work: Path, lay: Layout, seed: int) -> tuple[float, float]:
    """(precision, recall) of the planted copy pairs among the pairs the merged groups make."""
    from artclf import manifest

    group = {r["sha256"]: r["group"] for r in manifest.read_manifest(work)}
    sizes = np.bincount(np.array(list(group.values())))
    found = sum(group[key(seed, a)] == group[key(seed, b)] for g in lay.groups for a, b in combinations(g, 2))
    return found / max(1, int((sizes * (sizes - 1) // 2).sum())), found / max(1, lay.true_pairs)


def measure(n: int, a: argparse.Namespace, root: Path) -> dict:
    """Every step at size n, for each number of parts; the work folder is removed after."""
    work, lay = root / f"n{n}", layout(n, a.copies, a.pairs_per_image)
    write_manifest(work, lay, a.seed)
    job = {"work": str(work), "n": n, "dim": a.dim, "seed": a.seed}
    feats = run_child({**job, "step": "features", "copies": a.copies, "pairs_per_image": a.pairs_per_image})
    out, first = {"n": n, "true_pairs": lay.true_pairs, "features": feats, "runs": {}}, None
    for parts in a.parts:
        shutil.rmtree(work / "dedup" / "pairs", ignore_errors=True)  # nothing of another n is read back
        run = {"pairs": summary([run_child({**job, "step": "pairs", "num_parts": parts})])}
        run["candidates"] = json.loads((work / "dedup/pairs/plan.json").read_text())["distinct_pairs"]
        verify = [run_child({**job, "step": "verify", "part": i, "num_parts": parts}) for i in range(parts)]
        run["verify"], run["merge"] = summary(verify), summary([run_child({**job, "step": "merge"})])
        run["precision"], run["recall"] = truth(work, lay, a.seed)
        groups = (work / "dedup" / "groups.json").read_bytes()
        first = first or groups
        run["same_groups"] = groups == first
        out["runs"][parts] = run
    shutil.rmtree(work)
    return out


def _line(n: int, parts: int | str, step: str, s: dict, note: str = "") -> str:
    t, each = s["times"], " ".join(f"{x:.1f}" for x in s["times"])
    mib, mb = s["peak_mib"], s["wchar"] / 2**20
    return (
        f"{n:>8} {parts:>2} {step:<9}{sum(t):8.1f} {max(t):8.1f}  {each:<28}  {mib:8.1f} "
        f"{mib / n * 1000:7.2f} {mb:10.1f} {mb / n * 1024:7.2f} {note}"
    )


def report(rows: list[dict]) -> None:
    head = f"{'N':>8} {'n':>2} {'step':<9}{'wall s':>8} {'max part':>8}  {'per part s':<28}  {'peak MiB':>8} "
    print(
        head + f"{'MiB/1k':>7} {'written MiB':>10} {'KiB/img':>7}   (peak RSS: above start-up after imports)"
    )
    for r in rows:
        n, f = r["n"], r["features"]
        note = f"files {f['files_bytes'] / n / 1024:.2f} KiB/img (generating {f['generate_s']:.1f} s untimed)"
        print(_line(n, "", "features", {**f, "times": [f["seconds"]]}, note))
        for parts, run in r["runs"].items():
            print(_line(n, parts, "pairs", run["pairs"], f"{run['candidates']} candidate pairs"))
            print(_line(n, parts, "verify", run["verify"], "(peak: the largest part's)"))
            print(_line(n, parts, "merge", run["merge"]))
            crit = sum(max(run[s]["times"]) for s in ("pairs", "verify", "merge"))
            print(
                f"{n:>8} {parts:>2} critical path (pairs + largest verification part + merge): {crit:.1f} s"
            )


def checks(rows: list[dict]) -> bool:
    """The issue's ratios within this run; True when the planted truth was found everywhere."""
    lo, hi = (r["runs"][min(r["runs"])]["merge"] for r in (rows[0], rows[-1]))
    whole = [m["peak_mib"] + m["start_mib"] for m in (lo, hi)]
    print(
        f"merge peak RSS, N={rows[-1]['n']} / N={rows[0]['n']} (acceptance <= 2): above start-up "
        f"x{hi['peak_mib'] / lo['peak_mib']:.2f} ({lo['peak_mib']:.0f} -> {hi['peak_mib']:.0f} MiB), "
        f"whole process x{whole[1] / whole[0]:.2f} ({whole[0]:.0f} -> {whole[1]:.0f} MiB)"
    )
    for r in (r for r in rows if 1 in r["runs"]):
        t1 = r["runs"][1]["verify"]["times"][0]
        for parts, ts in ((p, run["verify"]["times"]) for p, run in r["runs"].items() if p > 1):
            print(
                f"N={r['n']} verification time per part, n={parts} / n=1: largest x{max(ts) / t1:.3f}, "
                f"mean x{np.mean(ts) / t1:.3f} (1/n = {1 / parts:.3f})"
            )
    for r in rows:
        kb = {p: sum(run[s]["wchar"] for s in ("pairs", "verify", "merge")) for p, run in r["runs"].items()}
        steps = ", ".join(f"n={p} {b / r['n'] / 1024:.2f}" for p, b in kb.items())
        feats = r["features"]["wchar"] / r["n"] / 1024
        print(f"N={r['n']} KiB written per image: features {feats:.2f}; pairs + verify + merge {steps}")
    good = True
    for r in rows:
        for parts, run in r["runs"].items():
            ok = run["precision"] == run["recall"] == 1.0 and run["same_groups"]
            good &= ok
            print(
                f"N={r['n']} n={parts}: {r['true_pairs']} planted pairs, precision {run['precision']:.4f}, "
                f"recall {run['recall']:.4f}, groups.json as with n={min(r['runs'])}: {run['same_groups']}"
                + ("" if ok else "  <- FAILED")
            )
    return good


def extrapolate(rows: list[dict], target: int) -> None:
    """Each figure on the line through the two largest sizes, at N = ``target``. The candidate
    search scores every pair of images, so for the pairs step the N² figure is printed beside."""
    a, b = rows[-2], rows[-1]

    def at(fa: float, fb: float) -> float:
        return max(0.0, fb + (fb - fa) / (b["n"] - a["n"]) * (target - b["n"]))

    for parts in b["runs"]:
        for step in ("pairs", "verify", "merge"):
            sa, sb = a["runs"][parts][step], b["runs"][parts][step]
            t, sq = at(max(sa["times"]), max(sb["times"])), max(sb["times"]) * (target / b["n"]) ** 2
            print(
                f"{target:>8} {parts:>2} {step:<9} largest part {t:7.0f} s"
                + (f" (N²: {sq:.0f} s)" if step == "pairs" else "")
                + f", peak {at(sa['peak_mib'], sb['peak_mib']):7.0f} MiB above start-up, written "
                f"{at(sa['wchar'], sb['wchar']) / 2**20:7.0f} MiB  extrapolated"
            )
    f = at(a["features"]["files_bytes"], b["features"]["files_bytes"])
    print(f"{target:>8}    feature store {f / 2**30:.1f} GiB  extrapolated")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="N, comma-separated, ascending")
    ap.add_argument("--parts", default="1,2,4", help="numbers of parts n, comma-separated (1 first)")
    ap.add_argument("--dim", type=int, default=2048, help="embedding width (resnet50: 2048)")
    ap.add_argument("--copies", type=float, default=0.05, help="share of images that are planted copies")
    ap.add_argument(
        "--pairs-per-image",
        type=float,
        default=0.3,
        help="distinct candidate pairs per image, copies and look-alikes (the Kaggle set: ~7; here <= ~5)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extrapolate", type=int, help="print this N extrapolated from the two largest sizes")
    ap.add_argument(
        "--images", type=int, default=256, help="images for the feature-extraction rate (0: skip)"
    )
    ap.add_argument(
        "--weights", help="mobilenet_v2 state dict for the CNN rate (tests/support/mobilenet_weights.py)"
    )
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the work folders go")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    a.parts = [int(x) for x in a.parts.split(",")]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    if a.images:
        rates = [feature_rate("mobilenet_v2", "none", a.images)]
        if a.weights:
            rates.append(feature_rate("mobilenet_v2", a.weights, a.images))
        for r in rates:
            print(f"features  {r['arch']:<14} {r['images']} images  {r['images_per_s']:8.1f} img/s")
    root = Path(tempfile.mkdtemp(prefix="bench-dedup-", dir=a.tmp))
    rows = []
    try:
        for n in a.sizes.split(","):
            rows.append(measure(int(n), a, root))
            report(rows[-1:])  # each size as it is done: a long run shows its first sizes early
    finally:
        shutil.rmtree(root, ignore_errors=True)
    good = checks(rows)
    if a.extrapolate and len(rows) > 1:
        extrapolate(rows, a.extrapolate)
    if not good:
        sys.exit("bench.dedup: the planted truth was not found exactly: the figures above mean nothing")


if __name__ == "__main__":
    main()
