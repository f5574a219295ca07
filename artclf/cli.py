"""``artclf <stage> …``: one entry point for every stage (each is also ``python -m artclf.<stage>``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from artclf import __version__

# stage -> (module, one-line description); order is the pipeline's.
STAGES: dict[str, tuple[str, str]] = {
    "sample-data": ("artclf.sample_data", "write a synthetic data set in the Kaggle layout"),
    "ingest": ("artclf.ingest", "scan a Kaggle folder into WORK/manifest.jsonl"),
    "eda": ("artclf.eda", "plot class counts and image sizes from the manifest"),
    "dedup": ("artclf.dedup", "find near-duplicate groups, choose which copy to keep"),
    "split": ("artclf.split", "grouped, stratified train/val/test split"),
    "shard": ("artclf.shard", "pack the split into WebDataset shards (disk or s3://)"),
    "train": ("artclf.train", "train (run under accelerate launch for DDP)"),
    "debug": ("artclf.train.debugreport", "what each rank was doing when a training job hung"),
    "evaluate": ("artclf.evaluate", "metrics and plots of a model on a split"),
    "sweep": (
        "artclf.sweep",
        "plan a grid x seeds of training runs; choose on val, score the chosen on test",
    ),
    "compare": (
        "artclf.sweep.compare",
        "one table of runs: config differences, val and test macro F1 with intervals, paired differences",
    ),
    "predict": ("artclf.predict", "top-k artists for new images"),
    "export": ("artclf.export", "ONNX, torch.export or TorchScript, parity-checked against PyTorch"),
    "serve": ("artclf.serve", "prediction service: FastAPI, ONNX Runtime or PyTorch"),
    "weights": ("artclf.weights", "fetch pretrained weights into torch hub's cache (login node)"),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: artclf <stage> [options]   (artclf <stage> --help)", "", "stages:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in STAGES.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"artclf {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"artclf: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage][0])
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
