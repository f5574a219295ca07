"""``artclf predict --model RUN/model.pt IMAGE_OR_DIR…``: the top-k artists of new images.

Images go through the transforms evaluation uses (:func:`artclf.images.open_rgb`: EXIF
orientation, then RGB, so PNG, grayscale and CMYK work; then ``to_uint8_tensor`` and
``eval_image`` with the Preprocess stored in ``model.pt``), so there is no train/serve skew.

Folders are searched recursively for image files (by suffix); files named on the command line
are always tried. A file that cannot be read is reported on stderr (file and cause) and
skipped. Exit status: 0 when at least one image was predicted, 1 when none was.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from artclf.config import arg, stage_main
from artclf.images import open_rgb
from artclf.model import load_model
from artclf.transforms import Preprocess, eval_image, to_uint8_tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class PredictConfig:
    model: Path = field(metadata=arg("model.pt written by artclf train"))
    inputs: tuple[Path, ...] = field(metadata=arg("images or folders (recursed)", positional=True, many=True))
    top_k: int = field(default=5, metadata=arg("artists listed per image"))
    format: str = field(default="table", metadata=arg("output: table, json or csv"))
    batch_size: int = field(default=16, metadata=arg("images per forward pass"))

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError("--top-k and --batch-size must be >= 1")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")


def load_image(path: Path | bytes, pre: Preprocess, max_pixels: int | None = None) -> torch.Tensor:
    """A file (or its bytes) -> the uint8 3×S×S tensor the model sees: the evaluation transform."""
    return eval_image(to_uint8_tensor(open_rgb(path, max_pixels=max_pixels)), pre)


def find_images(inputs: Sequence[Path]) -> Iterator[Path]:
    """Named files as given; folders recursed (sorted) for files with an image suffix."""
    for p in inputs:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def predict(model, pre: Preprocess, classes: list[str], paths: Iterator[Path], top_k: int, batch_size: int):
    """Yields (path, [(artist, probability)…]) per readable image; reports the others on stderr."""
    k = min(top_k, len(classes))
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush():
        with torch.inference_mode():
            probs = torch.softmax(model(torch.stack([x for _, x in batch])).float(), dim=1)
        top = probs.topk(k, dim=1)
        for (path, _), p, i in zip(batch, top.values.tolist(), top.indices.tolist(), strict=True):
            yield path, [(classes[c], v) for c, v in zip(i, p, strict=True)]
        batch.clear()

    for path in paths:
        try:
            batch.append((path, load_image(path, pre)))
        except Exception as e:  # any decoder error: name the file, keep going
            print(f"artclf predict: skipped {path}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def write(results, fmt: str, out=None) -> int:
    """Prints ``results`` in ``fmt`` (to ``out``, default stdout) as they come; returns the count."""
    out = out or sys.stdout
    n = 0
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(["path", "rank", "artist", "probability"])
    rows = []
    for path, top in results:
        n += 1
        if fmt == "table":
            out.write(f"{path}\n" + "".join(f"  {r}. {a:<28} {p:6.1%}\n" for r, (a, p) in enumerate(top, 1)))
        elif fmt == "csv":
            w.writerows([str(path), r, a, f"{p:.6f}"] for r, (a, p) in enumerate(top, 1))
        else:
            rows.append({"path": str(path), "top_k": [{"artist": a, "probability": p} for a, p in top]})
    if fmt == "json":
        json.dump(rows, out, indent=1, ensure_ascii=False)
        out.write("\n")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(PredictConfig, run, "artclf predict", __doc__, argv)


def run(cfg: PredictConfig) -> int:
    model, blob = load_model(cfg.model)
    pre = Preprocess.from_dict(blob["preprocess"])
    missing = [p for p in cfg.inputs if not p.exists()]
    for p in missing:
        print(f"artclf predict: skipped {p}: no such file or folder", file=sys.stderr)
    paths = find_images([p for p in cfg.inputs if p.exists()])
    n = write(predict(model, pre, blob["classes"], paths, cfg.top_k, cfg.batch_size), cfg.format)
    if n == 0:
        print("artclf predict: error: no image could be predicted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
