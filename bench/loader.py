"""Input pipeline throughput: artclf's exact train stream vs the resampled stream it replaced,
on disk and on a real S3 server, and vs the published project's ImageFolder.

    python -m bench.loader [--scale 0.12] [--sizes kaggle] [--workers 2] [--batch 32] [--passes 2]

One run, one machine, the same training images: a sample data set at the Kaggle originals'
sizes (``--sizes kaggle``: median 1.5 MP, 2 % of 10-14 MP; ``capped`` gives the older 0.3-3 MP
set) goes through ingest, dedup (hashes), split and shard (576 px). Then, with the same number
of DataLoader workers and batch size, for ``--passes`` passes over the train split:

* baseline: ``torchvision.datasets.ImageFolder`` over the original JPEGs with
  ``Resize((512, 512))``, ``ToTensor``, ``Normalize`` (what the published project did);
* resampled: the train stream artclf had until the exact epochs (each worker draws whole
  shards with replacement, streams them, shuffle buffer of 1,000), kept here as
  :func:`resampled_stream`, the baseline the exact stream must stay within 10 % of;
* exact: ``artclf.train.stream.train_stream``: one ranged read per sample (``_index.json``),
  in the seeded order of the epoch, crop, flip, uint8 at 512 px; on S3 from the node-local
  shard cache (``artclf.train.shardcache``), empty at the start of each measurement, so its
  first pass downloads every shard once.

The two artclf streams run over the shards on disk and, uploaded, on a SeaweedFS S3 server on
loopback (``tests/support/s3server.py``). Also the packing rate of ``artclf shard`` with 1
and 2 processes, and an epoch's start-up: the wait for the first batch of an epoch when each
epoch builds its loader anew against the wait at an epoch boundary of one persistent stream,
each after a pause standing in for evaluation. Prints img/s, img/s per core (worker), ratios.
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

from artclf import manifest, storage
from artclf.data import loader, read_info, tar_samples, train_index, worker_info
from artclf.dedup import DedupConfig, dedup
from artclf.ingest import IngestConfig, ingest
from artclf.sample_data import SampleDataConfig, generate
from artclf.shard import ShardConfig, shard
from artclf.split import SplitConfig, split
from artclf.train.order import Order
from artclf.train.shardcache import ShardCache
from artclf.train.stream import train_loader, train_stream
from artclf.transforms import Preprocess, decode, train_image


def resampled_stream(info: dict, pre: Preprocess, batch: int, workers: int, seed: int = 0):
    """The train stream before exact epochs (artclf until issue 26), for comparison: every
    worker draws shards with replacement (seeded per worker), streams each whole, shuffles in
    a 1,000-sample buffer, decodes, crops and flips; endless."""
    import random
    from functools import partial

    import webdataset as wds

    def decoded(src):
        rng = random.Random(seed * 7919 + worker_info()[0])
        for sample in src:
            if "__error__" not in sample:
                yield train_image(decode(sample["jpg"]), pre, rng.random() < 0.5, rng), int(sample["cls"])

    def batched(src):
        xs, ys = [], []
        for x, y in src:
            xs.append(x)
            ys.append(y)
            if len(xs) == batch:
                yield torch.stack(xs), torch.tensor(ys)
                xs, ys = [], []

    split = info["splits"]["train"]
    pipeline = wds.DataPipeline(
        wds.ResampledShards(
            split["urls"], seed=seed, worker_seed=lambda: worker_info()[0], deterministic=True
        ),
        partial(tar_samples, lengths=dict(zip(split["urls"], split["shard_lengths"], strict=True))),
        wds.shuffle(1000, initial=100, seed=seed),
        decoded,
        batched,
    )
    return loader(pipeline, workers, 0)


def exact_stream(info: dict, url: str, batch: int, workers: int, epoch: int | None = None):
    """The exact stream from the start of the run (endless), or one ``epoch`` of it; on S3
    through a node-local shard cache that starts empty (as the trainer's first epoch does)."""
    index = train_index(info, url)
    order = Order(len(index), batch, seed=0)
    fresh = tempfile.mkdtemp(prefix="cache-", dir=os.environ["BENCH_TMP"])  # inside the run's folder
    cache = ShardCache(fresh, index.digest(), info["shards"]) if storage.is_s3(url) else None
    if epoch is not None:
        return train_loader(index, order, epoch, 0, Preprocess(), workers, cache=cache)
    return train_stream(index, order, 0, Preprocess(), workers, cache=cache)


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


def epoch_start(info: dict, url: str, batch: int, workers: int, epochs: int, pause: float):
    """Median seconds to the first batch of epochs 2.. : a loader built per epoch vs one stream."""
    fresh = []
    for epoch in range(epochs):
        time.sleep(pause)  # evaluation, between epochs
        t = time.perf_counter()
        it = iter(exact_stream(info, url, batch, workers, epoch))
        next(it)
        fresh.append(time.perf_counter() - t)
        del it
    steps = Order(info["splits"]["train"]["num_samples"], batch, 0).steps
    stream = iter(exact_stream(info, url, batch, workers))
    persistent = []
    for _ in range(epochs):
        time.sleep(pause)
        t = time.perf_counter()
        next(stream)
        persistent.append(time.perf_counter() - t)
        for _ in islice(stream, steps - 1):
            pass
    return statistics.median(fresh[1:]), statistics.median(persistent[1:])


def streams(info: dict, url: str, a: argparse.Namespace, total: int) -> dict[str, tuple[float, int]]:
    """img/s of the resampled and the exact stream over the shard set at ``url``, alternated
    twice (each rate the better of its two, so a slow moment of the machine hits both)."""
    out: dict[str, list] = {"resampled": [], "exact": []}
    for _ in range(2):
        out["resampled"].append(rate(resampled_stream(info, Preprocess(), a.batch, a.workers), total))
        out["exact"].append(rate(exact_stream(info, url, a.batch, a.workers), total))
    return {k: max(v) for k, v in out.items()}


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
        os.environ["BENCH_TMP"] = tmp
        work, folder = prepare(root, a.scale, a.sizes)
        originals = [p.stat().st_size for p in (root / "data").rglob("*.jpg")]
        pack = {}
        for procs in (1, 2):
            t = time.perf_counter()
            # 100 a shard: the size the recorded numbers (docs/benchmarks.md) were measured with
            cfg = ShardConfig(work=work, out=str(root / f"shards{procs}"), workers=procs, shard_samples=100)
            info = shard(cfg)
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
        disk = streams(info, str(root / "shards2"), a, total)
        start_fresh, start_stream = epoch_start(info, str(root / "shards2"), a.batch, a.workers, 4, 2.0)
        on_s3 = s3_rates(root, a, total)
    print(
        f"train images {n_train}, originals median {sorted(mp)[len(mp) // 2]:.2f} MP, max {max(mp):.2f} MP, "
        f"mean JPEG {sum(originals) / len(originals) / 1024:.0f} KB"
    )
    per_core = lambda r: f"{r:8.1f} img/s  {r / a.workers:7.1f} img/s/core"  # noqa: E731
    print(f"baseline ImageFolder+Resize(512,512)      {per_core(base_rate)}  ({base_n} images)")
    for where, rates in (("disk", disk), ("S3", on_s3)):
        for name, (r, n) in rates.items():
            print(f"artclf {name:9} stream 512 px, {where:4}    {per_core(r)}  ({n} images)")
        ratio = rates["exact"][0] / rates["resampled"][0]
        print(f"ratio exact / resampled on {where}: {ratio:.3f}")
    print(f"ratio exact (disk) / ImageFolder baseline: {disk['exact'][0] / base_rate:.2f}x")
    print(
        f"packing (artclf shard, 576 px): 1 process {pack[1]:.1f} img/s, 2 processes {pack[2]:.1f} img/s "
        f"(scaling {pack[2] / pack[1]:.2f}x)"
    )
    print(
        f"cores for 1,200 img/s at the exact stream's per-core rate: "
        f"{1200 / (disk['exact'][0] / a.workers):.1f}"
    )
    print(
        f"epoch start-up (first batch after a 2 s pause, median of epochs 2-4): loader per epoch "
        f"{start_fresh:.3f} s, persistent stream {start_stream:.3f} s"
    )


def s3_rates(root: Path, a: argparse.Namespace, total: int) -> dict[str, tuple[float, int]]:
    """The shards uploaded to a SeaweedFS server of this run's own, both streams read there."""
    from tests.support.s3server import _stop, start

    (root / "s3").mkdir()
    proc, server = start(root / "s3")
    try:
        for k, v in server.env().items():
            os.environ[k] = v
        url = f"s3://{server.bucket}/shards"
        for path in sorted((root / "shards2").rglob("*")):
            if path.is_file():
                storage.upload_file(path, f"{url}/{path.relative_to(root / 'shards2').as_posix()}")
        storage.register_webdataset_s3()
        return streams(read_info(url), url, a, total)
    finally:
        _stop(proc)


if __name__ == "__main__":
    main()
