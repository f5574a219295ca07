"""``artclf predict --model RUN/model.pt IMAGE_OR_DIR…``: the top-k artists of new images.

Images go through the transforms evaluation uses (:func:`artclf.images.open_rgb`: EXIF
orientation, then RGB, so PNG, grayscale and CMYK work; then ``to_uint8_tensor`` and
``eval_image`` with the Preprocess stored in ``model.pt``), so there is no train/serve skew.

Probabilities are calibrated (the temperature in ``model.pt``). The answer is the top artist,
or ``unknown`` when the top probability is below the model's open-set threshold (the top k
are listed either way); artists carry the names ``artists.csv`` writes ("Albrecht Dürer") and,
in JSON and CSV, the stable class id beside them. ``--explain DIR`` writes a Grad-CAM heat
map of the top class over each image (``DIR/<image>.gradcam.png``).

Folders are searched recursively for image files (by suffix); files named on the command line
are always tried. A file that cannot be read is reported on stderr (file and cause) and
skipped. Exit status: 0 when at least one image was predicted, 1 when none was.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from artclf.artists import display_names
from artclf.atomic import atomic_open
from artclf.calibration import is_known
from artclf.config import arg, stage_main
from artclf.explain import grad_cam, overlay, png_bytes, target_layer
from artclf.images import open_rgb
from artclf.model import load_model
from artclf.transforms import Preprocess, eval_image, to_uint8_tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
FORMATS = ("table", "json", "csv")
UNKNOWN = "unknown"  # the answer below the model's open-set threshold


@dataclass(frozen=True)
class PredictConfig:
    model: Path = field(metadata=arg("model.pt written by artclf train"))
    inputs: tuple[Path, ...] = field(metadata=arg("images or folders (recursed)", positional=True, many=True))
    top_k: int = field(default=5, metadata=arg("artists listed per image"))
    format: str = field(default="table", metadata=arg("output: table, json or csv"))
    batch_size: int = field(default=16, metadata=arg("images per forward pass"))
    explain: Path | None = field(
        default=None,
        metadata=arg(
            "folder for Grad-CAM heat maps of the top class (<image>.gradcam.png), named in the output"
        ),
    )

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError("--top-k and --batch-size must be >= 1")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")


def load_image(
    path: Path | bytes, pre: Preprocess, max_pixels: int | None = None, formats: Sequence[str] | None = None
) -> torch.Tensor:
    """A file (or its bytes) -> the uint8 3×S×S tensor the model sees: the evaluation transform.
    Decoded at reduced size where the format allows (never below ``pre.resize``)."""
    im = open_rgb(path, min_side=pre.resize, max_pixels=max_pixels, formats=formats, reduce_others=True)
    return eval_image(to_uint8_tensor(im), pre)


def find_images(inputs: Sequence[Path]) -> Iterator[Path]:
    """Named files as given; folders recursed (sorted) for files with an image suffix."""
    for p in inputs:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def probabilities(model, pre: Preprocess, paths: Iterable[Path], batch_size: int):
    """Yields (path, model input, calibrated probabilities) per readable image; reports the
    others on stderr."""
    batch: list[tuple[Path, torch.Tensor]] = []
    device = next(model.parameters()).device

    def flush():
        with torch.inference_mode():
            probs = torch.softmax(model(torch.stack([x for _, x in batch]).to(device)).float(), dim=1)
        yield from ((path, x, p) for (path, x), p in zip(batch, probs.cpu().numpy(), strict=True))
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


def answer(
    probs: np.ndarray, classes: list[str], names: list[str], top_k: int, open_set: dict | None
) -> dict:
    """One image's answer: the artist, or ``unknown`` below the model's open-set threshold (the
    top k shown either way), in people's names with the stable class id beside each."""
    order = np.argsort(-probs, kind="stable")[: min(top_k, len(classes))]
    top = [{"artist": names[i], "class": classes[i], "probability": float(probs[i])} for i in order]
    known = bool(is_known(probs[None], open_set)[0])
    return {
        "answer": top[0]["artist"] if known else UNKNOWN,
        "class": top[0]["class"] if known else None,
        "known": known,
        "score": float(probs.max()),
        "threshold": open_set["threshold"] if open_set else None,
        "top_k": top,
    }


def explain_to(out: Path, path: Path, x: torch.Tensor, model, taken: set[str]) -> Path:
    """Grad-CAM of the top class over ``x``, the image the model saw, as ``out/<name>.gradcam.png``."""
    cam, _ = grad_cam(model, x[None])
    stem = path.stem
    while stem in taken:  # two inputs of the same name from different folders
        stem += "_"
    taken.add(stem)
    dest = out / f"{stem}.gradcam.png"
    with atomic_open(dest, "wb") as f:
        f.write(png_bytes(overlay(x, cam)))
    return dest


def write(results: Iterable[tuple[Path, dict]], fmt: str, out=None) -> int:
    """Prints ``results`` in ``fmt`` (to ``out``, default stdout) as they come; returns the count."""
    out = out or sys.stdout
    n = 0
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(["path", "answer", "rank", "artist", "class", "probability"])
    rows = []
    for path, a in results:
        n += 1
        if fmt == "table":
            head = a["answer"] if a["known"] else f"unknown (score {a['score']:.1%} < {a['threshold']:.1%})"
            out.write(f"{path}: {head}\n")
            out.write(
                "".join(
                    f"  {r}. {t['artist']:<28} {t['probability']:6.1%}\n" for r, t in enumerate(a["top_k"], 1)
                )
            )
            if "explanation" in a:
                out.write(f"  why: {a['explanation']}\n")
        elif fmt == "csv":
            w.writerows(
                [str(path), a["answer"], r, t["artist"], t["class"], f"{t['probability']:.6f}"]
                for r, t in enumerate(a["top_k"], 1)
            )
        else:
            rows.append({"path": str(path), **a})
    if fmt == "json":
        json.dump(rows, out, indent=1, ensure_ascii=False)
        out.write("\n")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(PredictConfig, run, "artclf predict", __doc__, argv)


def run(cfg: PredictConfig) -> int:
    model, blob = load_model(cfg.model)
    pre = Preprocess.from_dict(blob["preprocess"])
    classes, names = blob["classes"], display_names(blob["classes"], blob.get("artists"))
    missing = [p for p in cfg.inputs if not p.exists()]
    for p in missing:
        print(f"artclf predict: skipped {p}: no such file or folder", file=sys.stderr)
    paths = find_images([p for p in cfg.inputs if p.exists()])
    if cfg.explain is not None:
        target_layer(model)  # an arch without a known block fails before any work
        cfg.explain.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()

    def results():
        for path, x, p in probabilities(model, pre, paths, cfg.batch_size):
            a = answer(p, classes, names, cfg.top_k, blob.get("open_set"))
            if cfg.explain is not None:
                a["explanation"] = str(explain_to(cfg.explain, path, x, model, taken))
            yield path, a

    n = write(results(), cfg.format)
    if n == 0:
        print("artclf predict: error: no image could be predicted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
