"""A model's answer for images on disk or in a request: find them, load each as the model sees
it, score them in batches, and turn probabilities into the answer people read.

Shared by ``artclf predict``, ``artclf evaluate --unseen`` (open-set scores), ``artclf export``
(its parity images) and ``artclf serve`` (uploads): one loading path (:func:`load_image`, the
evaluation transform of ``artclf.transforms``), so there is no train/serve skew.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from artclf.images import open_rgb
from artclf.metrics.calibration import is_known
from artclf.transforms import Preprocess, eval_image, to_uint8_tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
UNKNOWN = "unknown"  # the answer below the model's open-set threshold


def load_image(
    path: Path | bytes,
    pre: Preprocess,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    max_declared_pixels: int | None = None,
) -> torch.Tensor:
    """A file (or its bytes) -> the uint8 3×S×S tensor the model sees: the evaluation transform.
    Decoded at reduced size where the format allows (never below ``pre.resize``); the pixel
    caps are :func:`artclf.images.open_rgb`'s (a JPEG counts at its reduced decode when
    ``max_declared_pixels`` is given)."""
    return load_picture(path, pre, max_pixels, formats, max_declared_pixels)[1]


def load_picture(
    path: Path | bytes,
    pre: Preprocess,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    max_declared_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(picture, model input): the upright RGB uint8 3×H×W picture decoded as :func:`load_image`
    decodes it (reduced size where the format allows; the same caps), which heat maps are drawn
    over, and the 3×S×S tensor the model sees, cut from it."""
    im = open_rgb(
        path,
        min_side=pre.resize,
        max_pixels=max_pixels,
        formats=formats,
        reduce_others=True,
        max_declared_pixels=max_declared_pixels,
    )
    picture = to_uint8_tensor(im)
    return picture, eval_image(picture, pre)


def find_images(inputs: Sequence[Path]) -> Iterator[Path]:
    """Named files as given; folders recursed (sorted) for files with an image suffix."""
    for p in inputs:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def probabilities(model, pre: Preprocess, paths: Iterable[Path], batch_size: int, **caps):
    """Yields (path, model input, calibrated probabilities) per readable image; reports the
    others on stderr. ``caps``: :func:`load_image`'s ``max_pixels`` and ``max_declared_pixels``."""
    batch: list[tuple[Path, torch.Tensor]] = []
    device = next(model.parameters()).device

    def flush():
        with torch.inference_mode():
            probs = torch.softmax(model(torch.stack([x for _, x in batch]).to(device)).float(), dim=1)
        yield from ((path, x, p) for (path, x), p in zip(batch, probs.cpu().numpy(), strict=True))
        batch.clear()

    for path in paths:
        try:
            batch.append((path, load_image(path, pre, **caps)))
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
