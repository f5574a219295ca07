"""dedup throughput and memory: feature extraction (img/s) and blocked top-k search (img/s,
peak memory) for N = 1k, 10k and a simulated 100k.

    python -m bench.dedup [--sizes 1000,10000,100000] [--dim 2048] [--images 256]

Feature extraction streams through a DataLoader, so its rate does not depend on N; it is
measured on ``--images`` sample-data images (decode + hashes + thumbnail + ORB keypoints + CNN
at 224 px). The search is
measured on random unit vectors of the CNN's width, each N in its own process; the peak
resident memory (VmHWM, reset after start-up) belongs to that N alone. Memory should grow linearly:
the N×D embeddings plus O(N·k) results plus one block×block tile, never N×N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns that RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def search_child(n: int, dim: int, k: int) -> dict:
    """Runs in a fresh process: search n random unit vectors against themselves."""
    import torch

    from artclf.dedup.neighbors import topk_similar

    torch.zeros(1)  # torch's own start-up memory belongs to the baseline
    base = reset_peak()
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    for i in range(0, n, 8192):  # in chunks: np.linalg.norm would allocate a second N×D array
        x[i : i + 8192] /= np.linalg.norm(x[i : i + 8192], axis=1, keepdims=True)
    t = time.perf_counter()
    topk_similar(x, x, k, exclude_self=True)
    dt = time.perf_counter() - t
    peak = _status_mib("VmHWM")
    return {
        "n": n,
        "dim": dim,
        "seconds": round(dt, 2),
        "images_per_s": round(n / dt, 1),
        "peak_mib": round(peak, 1),
        "above_baseline_mib": round(peak - base, 1),
        "embeddings_mib": round(x.nbytes / 2**20, 1),
    }


def feature_rate(arch: str, weights: str, images: int) -> dict:
    """img/s of decode + hashes + keypoints + CNN features over sample-data images (one process,
    2 workers)."""
    import torch

    from artclf.dedup import features
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
        feats = features.Features({"arch": arch} if model is not None else None)
        keys = [str(i) for i in range(len(paths))]
        t = time.perf_counter()
        features.compute(feats, keys, paths, model, 224, 32, 2, save_to=None)
        dt = time.perf_counter() - t
    return {
        "arch": arch if model is not None else "hashes only",
        "images": len(paths),
        "images_per_s": round(len(paths) / dt, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument(
        "--dim", type=int, default=2048, help="embedding width (resnet50: 2048, mobilenet_v2: 1280)"
    )
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--images", type=int, default=256, help="images for the feature-extraction rate")
    ap.add_argument(
        "--weights",
        default=None,
        help="mobilenet_v2 state dict for the CNN rate (tests/support/mobilenet_weights.py)",
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(search_child(a.child, a.dim, a.k)))
        return
    print(f"# {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    rates = [feature_rate("mobilenet_v2", "none", a.images)]
    if a.weights:
        rates.append(feature_rate("mobilenet_v2", a.weights, a.images))
    for r in rates:
        print(f"features  {r['arch']:<14} {r['images']} images  {r['images_per_s']:8.1f} img/s")
    rows = []
    for n in map(int, a.sizes.split(",")):
        cmd = [sys.executable, "-m", "bench.dedup", "--child", str(n), "--dim", str(a.dim), "--k", str(a.k)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"search    N={n:>7} dim={a.dim}  {r['seconds']:8.1f} s  {r['images_per_s']:8.1f} img/s  "
            f"peak {r['peak_mib']:8.1f} MiB, +{r['above_baseline_mib']:.1f} MiB over start-up "
            f"({r['above_baseline_mib'] / n * 1000:.1f} MiB per 1k images; embeddings alone "
            f"{r['embeddings_mib'] / n * 1000:.1f})"
        )
    for r in rows[1:]:
        growth = r["above_baseline_mib"] / max(rows[0]["above_baseline_mib"], 1e-9)
        print(
            f"N x{r['n'] / rows[0]['n']:.0f}: memory x{growth:.1f}, "
            f"time x{r['seconds'] / rows[0]['seconds']:.1f}"
        )


if __name__ == "__main__":
    main()
