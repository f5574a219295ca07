"""Pixel-level check of a candidate re-photograph: aligned thumbnail correlation.

Global CNN embeddings find re-photographs (another crop, another colour cast), but they also
score distinct paintings of one artist alike: same palette, same brushwork. A re-photograph
keeps the *layout*. So each candidate pair is checked on small RGB thumbnails: one image is
cropped by 0, 5 or 10 % on each side (81 crops; the real set's re-photographs crop up to
about 10 %), both are shrunk to 16×16, and the best per-channel Pearson correlation over
crops, both directions and the mirror image, is the pair's score. Pearson is blind to gain
and offset per channel, so colour casts and exposure do not matter; when either image is
grayscale, luminance is compared instead.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

THUMB = 48  # px, the stored thumbnail (uint8 RGB, THUMB×THUMB)
SIDE = 16  # px, compared grid
FRACTIONS = (0.0, 0.05, 0.10)  # cropped off each side: the real set's re-photographs crop up to ~10 %
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def thumbnail(im: Image.Image) -> np.ndarray:
    """The stored THUMB×THUMB RGB uint8 thumbnail of an (RGB, upright) image."""
    return np.array(im.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.uint8)


def _box_weights(start: float, stop: float) -> np.ndarray:
    """SIDE×THUMB matrix averaging [start, stop) of a THUMB-pixel line into SIDE cells."""
    edges = np.linspace(start, stop, SIDE + 1)
    px = np.arange(THUMB)
    overlap = np.clip(np.minimum(edges[1:, None], px + 1) - np.maximum(edges[:-1, None], px), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


# One matrix per (near-side, far-side) crop of a line: 3 × 3 = 9, for rows and columns alike.
_CROPS = np.stack([_box_weights(a * THUMB, THUMB - b * THUMB) for a in FRACTIONS for b in FRACTIONS])
_FULL = _box_weights(0, THUMB)


def _zscore(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit norm over the pixel axis (-2) of ``(..., pixels, channels)``."""
    x = x - x.mean(axis=-2, keepdims=True)
    return x / (np.linalg.norm(x, axis=-2, keepdims=True) + 1e-6)


def _is_gray(thumb: np.ndarray) -> bool:
    return float(np.abs(thumb.astype(np.float32) - thumb.mean(axis=2, keepdims=True)).mean()) < 2.0


def crop_bank(thumb: np.ndarray) -> np.ndarray:
    """All 81 crops of a thumbnail on the SIDE×SIDE grid: (81, SIDE², 3) float32."""
    t = thumb.astype(np.float32)
    bank = np.einsum("ayh,hwc,bxw->abyxc", _CROPS, t, _CROPS, optimize=True)
    return bank.reshape(len(_CROPS) ** 2, SIDE * SIDE, 3)


def views(thumb: np.ndarray) -> np.ndarray:
    """The whole thumbnail and its mirror image on the grid: (2, SIDE², 3) float32."""
    t = thumb.astype(np.float32)
    plain = np.einsum("yh,hwc,xw->yxc", _FULL, t, _FULL, optimize=True)
    return np.stack([plain, plain[:, ::-1]]).reshape(2, SIDE * SIDE, 3)


def _prepared(thumb: np.ndarray) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """z-scored (crops, views) of a thumbnail, in colour (False) and luminance (True)."""
    crops, whole = crop_bank(thumb), views(thumb)
    return {
        False: (_zscore(crops), _zscore(whole)),
        True: (_zscore(crops @ _LUMA[:, None]), _zscore(whole @ _LUMA[:, None])),
    }


def _one_way(a: dict, b: dict, gray: bool) -> float:
    # (crop, pixel, channel) × (view, pixel, channel) -> correlation per channel, averaged
    return float(np.einsum("ckd,vkd->cvd", a[gray][0], b[gray][1]).mean(axis=-1).max())


def score(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over crops of either thumbnail against the other, plain or mirrored."""
    gray = _is_gray(a) or _is_gray(b)
    pa, pb = _prepared(a), _prepared(b)
    return max(_one_way(pa, pb, gray), _one_way(pb, pa, gray))


def passes(pairs: np.ndarray, thumbs: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each pair (a row of indices into ``thumbs``) scores at least ``threshold``."""
    prepared = lru_cache(maxsize=256)(lambda i: _prepared(thumbs[i]))  # pairs come sorted by i
    gray = lru_cache(maxsize=None)(lambda i: _is_gray(thumbs[i]))
    ok = np.zeros(len(pairs), bool)
    for k, (a, b) in enumerate(pairs.tolist()):
        g = gray(a) or gray(b)
        pa, pb = prepared(a), prepared(b)
        ok[k] = max(_one_way(pa, pb, g), _one_way(pb, pa, g)) >= threshold
    return ok


def verify(pairs: np.ndarray, thumbs: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs (rows of indices into ``thumbs``) whose score reaches ``threshold``."""
    return pairs[passes(pairs, thumbs, threshold)] if len(pairs) else pairs
