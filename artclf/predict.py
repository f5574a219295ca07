"""``artclf predict --model RUN/model.pt IMAGE_OR_DIR…``: the top-k artists of new images.

Images go through the transforms evaluation uses (:func:`artclf.images.open_rgb`: EXIF
orientation, then RGB, so PNG, grayscale and CMYK work; then ``to_uint8_tensor`` and
``eval_image`` with the Preprocess stored in ``model.pt``), so there is no train/serve skew.

Probabilities are calibrated (the temperature in ``model.pt``). The answer is the top artist,
or ``unknown`` when the top probability is below the model's open-set threshold (the top k
are listed either way); artists carry the names ``artists.csv`` writes ("Albrecht Dürer") and,
in JSON and CSV, the stable class id beside them. ``--explain DIR`` writes a Grad-CAM heat
map of the top class over each image (``DIR/<image>.gradcam.png``): the whole picture, 512 to
1024 px on its long side, the centre square the model saw outlined and the rest dimmed.

Folders are searched recursively for image files (by suffix); files named on the command line
are always tried. A file that cannot be read is reported on stderr (file and cause) and
skipped. Exit status: 0 when at least one image was predicted, 1 when none was; with
``--strict``, 1 when any input could not be read (the others are still predicted and printed).

Pixel caps, as ``artclf serve`` applies them: a baseline JPEG counts at its reduced decode (a
200 MP phone photo decodes at 1/8), its header up to ``--max-declared-pixels``; whatever
decodes in full (PNG, WebP, TIFF, BMP, GIF, progressive JPEG) at its size, up to ``--max-pixels``.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from artclf.artists import display_names
from artclf.atomic import atomic_open
from artclf.config import arg, stage_main
from artclf.explain import grad_cam, heat_map, png_bytes, target_layer
from artclf.images import DECLARED_CEILING
from artclf.inference import answer, find_images, load_picture, probabilities
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
    max_pixels: int = field(
        default=0,
        metadata=arg(
            "most pixels an image may decode to, width × height (a baseline JPEG at its reduced decode, "
            "others at full size); 0: Pillow's decompression-bomb limit (179 MP)"
        ),
    )
    max_declared_pixels: int = field(
        default=DECLARED_CEILING,
        metadata=arg(
            "most pixels a JPEG's header may declare: a JPEG decodes reduced, so far above --max-pixels "
            "(phones write up to 200 MP; beyond 400 MP it is a decompression bomb)"
        ),
    )
    strict: bool = field(
        default=False,
        metadata=arg("exit 1 when any input could not be read (default: report it on stderr, go on)"),
    )

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.batch_size < 1 or self.max_declared_pixels < 1:
            raise ValueError("--top-k, --batch-size and --max-declared-pixels must be >= 1")
        if self.max_pixels < 0:
            raise ValueError(f"--max-pixels must be >= 0 (0: Pillow's own limit), got {self.max_pixels}")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")


def explain_to(out: Path, path: Path, model, pre: Preprocess, taken: set[str], **caps) -> Path:
    """Grad-CAM of the top class over the whole picture at ``path``, the model's crop marked
    (:func:`artclf.explain.heat_map`, what serve draws too), as ``out/<name>.gradcam.png``.
    ``caps``: the pixel caps the file was read with for its prediction."""
    picture, _ = load_picture(path, pre, **caps)  # decoded again: only --explain keeps pictures
    im, _ = heat_map(partial(grad_cam, model), picture, pre)
    stem = path.stem
    while stem in taken:  # two inputs of the same name from different folders
        stem += "_"
    taken.add(stem)
    dest = out / f"{stem}.gradcam.png"
    with atomic_open(dest, "wb") as f:
        f.write(png_bytes(im))
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
    tried: list[Path] = []  # what the loader was given: those not predicted were unreadable
    paths = (tried.append(p) or p for p in find_images([p for p in cfg.inputs if p.exists()]))
    caps = {"max_pixels": cfg.max_pixels or None, "max_declared_pixels": cfg.max_declared_pixels}
    if cfg.explain is not None:
        target_layer(model)  # an arch without a known block fails before any work
        cfg.explain.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()

    def results():
        for path, _x, p in probabilities(model, pre, paths, cfg.batch_size, **caps):
            a = answer(p, classes, names, cfg.top_k, blob.get("open_set"))
            if cfg.explain is not None:
                a["explanation"] = str(explain_to(cfg.explain, path, model, pre, taken, **caps))
            yield path, a

    n = write(results(), cfg.format)
    if n == 0:
        print("artclf predict: error: no image could be predicted", file=sys.stderr)
        return 1
    unreadable = len(missing) + len(tried) - n
    if cfg.strict and unreadable:
        print(f"artclf predict: error: {unreadable} of {len(missing) + len(tried)} inputs could not be read "
              "(--strict)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
