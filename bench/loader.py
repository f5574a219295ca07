"""Input pipeline throughput: artclf's shard pipeline vs the published project's ImageFolder.

    python -m bench.loader [--scale 0.12] [--sizes kaggle] [--workers 2] [--batch 32] [--passes 2]

One run, one machine, the same training images: a sample data set at the Kaggle originals'
sizes (``--sizes kaggle``: median 1.5 MP, 2 % of 10-14 MP; ``capped`` gives the older 0.3-3 MP
set) goes through ingest, dedup (hashes), split and shard (576 px). Then, with the same number
of DataLoader workers and batch size, for ``--passes`` passes over the train split:

* baseline: ``torchvision.datasets.ImageFolder`` over the original JPEGs with
  ``Resize((512, 512))``, ``ToTensor``, ``Normalize`` (what the published project did);
* artclf: ``artclf.data.train_loader`` over the shards at 512 px (crop, flip, uint8; the
  model normalises on the device).

Also the packing rate of ``artclf shard`` with 1 and 2 processes, and an epoch's start-up:
the wait for the first batch of an epoch when each epoch builds its loader anew (as the
trainer did before the persistent stream) against the wait at an epoch boundary of one
persistent stream (``train_stream``), each after a pause standing in for evaluation. Prints
img/s, img/s per core (worker), and the ratio artclf / baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from artclf import manifest
from artclf.data import read_info, train_loader, train_stream
from artclf.dedup import DedupConfig, dedup
from artclf.ingest import IngestConfig, ingest
from artclf.sample_data import SampleDataConfig, generate
from artclf.shard import ShardConfig, shard
from artclf.split import SplitConfig, split
from artclf.transforms import Preprocess


def prepare(root: Path, scale: float, sizes: str) -> tuple[Path, Path]:
    """Sample set at real sizes, ingested, deduplicated, split; an ImageFolder view of train."""
    generate(SampleDataConfig(out=root / "data", scale=scale, seed=5, max_side=0, sizes=sizes))
    ingest(IngestConfig(data_dir=root / "data", work=root / "work"))
    dedup(DedupConfig(work=root / "work", weights="none", montages=0))
    split(SplitConfig(work=root / "work"))
    folder = root / "imagefolder"
    for r in manifest.read_manifest(root / "work"):
        if r.get("keep") and r.get("split") == "train":
            dest = folder / str(r["label"]) / Path(r["path"]).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(root / "data" / r["path"])
    return root / "work", folder


def rate(batches, passes_images: int) -> tuple[float, int]:
    """img/s over the iterable (worker start-up included, as a training epoch sees it)."""
    n, t = 0, time.perf_counter()
    for b in batches:
        n += len(b[1]) if isinstance(b, list | tuple) else len(b.labels)
        if n >= passes_images:
            break
    return n / (time.perf_counter() - t), n


def epoch_start(info: dict, batch: int, workers: int, epochs: int, pause: float) -> tuple[float, float]:
    """Median seconds to the first batch of epochs 2.. : a loader built per epoch vs one stream."""
    steps = 4
    fresh = []
    for epoch in range(epochs):
        time.sleep(pause)  # evaluation, between epochs
        t = time.perf_counter()
        it = iter(train_loader(info, Preprocess(), batch, workers, 0, 1, epoch=epoch, seed=0, steps=steps))
        next(it)
        fresh.append(time.perf_counter() - t)
        for _ in it:
            pass
    stream = iter(train_stream(info, Preprocess(), batch, workers, 0, 1, seed=0))
    persistent = []
    for _ in range(epochs):
        time.sleep(pause)
        t = time.perf_counter()
        next(stream)
        persistent.append(time.perf_counter() - t)
        for _ in islice(stream, steps - 1):
            pass
    return statistics.median(fresh[1:]), statistics.median(persistent[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.12, help="sample-data scale (0.12: about 1,000 images)")
    ap.add_argument("--sizes", default="kaggle", help="sample-data --sizes: kaggle or capped (with no cap)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, workers {a.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work, folder = prepare(root, a.scale, a.sizes)
        originals = [p.stat().st_size for p in (root / "data").rglob("*.jpg")]
        pack = {}
        for procs in (1, 2):
            t = time.perf_counter()
            info = shard(ShardConfig(work=work, out=str(root / f"shards{procs}"), workers=procs))
            n = sum(s["num_samples"] for s in info["splits"].values())
            pack[procs] = n / (time.perf_counter() - t)
        mp = [
            r["width"] * r["height"] / 1e6 for r in manifest.read_manifest(work) if r.get("split") == "train"
        ]
        info = read_info(str(root / "shards2"))
        n_train = info["splits"]["train"]["num_samples"]
        total = n_train * a.passes
        base_tf = v2.Compose(
            [
                v2.Resize((512, 512)),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(Preprocess().mean, Preprocess().std),
            ]
        )
        base = DataLoader(
            datasets.ImageFolder(str(folder), transform=base_tf),
            batch_size=a.batch,
            shuffle=True,
            num_workers=a.workers,
        )
        base_rate, base_n = rate((b for _ in range(a.passes) for b in base), total)
        steps = total // a.batch
        ours = train_loader(info, Preprocess(), a.batch, a.workers, 0, 1, epoch=0, seed=0, steps=steps)
        our_rate, our_n = rate(ours, total)
        start_fresh, start_stream = epoch_start(info, a.batch, a.workers, epochs=4, pause=2.0)
    print(
        f"train images {n_train}, originals median {sorted(mp)[len(mp) // 2]:.2f} MP, max {max(mp):.2f} MP, "
        f"mean JPEG {sum(originals) / len(originals) / 1024:.0f} KB"
    )
    print(
        f"baseline ImageFolder+Resize(512,512)  {base_rate:8.1f} img/s  "
        f"{base_rate / a.workers:7.1f} img/s/core"
        f"  ({base_n} images)"
    )
    print(
        f"artclf shards train_loader 512 px    {our_rate:8.1f} img/s  {our_rate / a.workers:7.1f} img/s/core"
        f"  ({our_n} images)"
    )
    print(f"ratio artclf / baseline: {our_rate / base_rate:.2f}x")
    print(
        f"packing (artclf shard, 576 px): 1 process {pack[1]:.1f} img/s, 2 processes {pack[2]:.1f} img/s "
        f"(scaling {pack[2] / pack[1]:.2f}x)"
    )
    print(f"cores for 1,200 img/s at this per-core rate: {1200 / (our_rate / a.workers):.1f}")
    print(
        f"epoch start-up (first batch after a 2 s pause, median of epochs 2-4): loader per epoch "
        f"{start_fresh:.3f} s, persistent stream {start_stream:.3f} s"
    )


if __name__ == "__main__":
    main()
