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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from artclf.artists import display_names
from artclf.atomic import atomic_open
from artclf.config import arg, stage_main
from artclf.explain import grad_cam, overlay, png_bytes, target_layer
from artclf.inference import answer, find_images, probabilities
from artclf.model import load_model
from artclf.transforms import Preprocess

FORMATS = ("table", "json", "csv")


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
