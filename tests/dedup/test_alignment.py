"""Aligned thumbnail correlation: re-photographs score high, other paintings of the same style low."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from artclf.dedup.alignment import score, thumbnail, verify
from tests.dedup.test_phash import paintings


def rephotograph(
    im: Image.Image, crop: tuple[float, float, float, float], gain=(1.1, 0.95, 0.9)
) -> Image.Image:
    w, h = im.size
    left, top, right, bottom = crop
    out = im.crop((round(left * w), round(top * h), round(w - right * w), round(h - bottom * h))).resize(
        (w * 3 // 4, h * 3 // 4)
    )
    arr = np.asarray(out, dtype=np.float32) * np.array(gain, dtype=np.float32) + 8
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def test_cropped_colour_cast_and_mirrored_copies_score_high(sample_dir):
    for im in paintings(sample_dir)[:6]:
        t = thumbnail(im)
        assert score(t, thumbnail(rephotograph(im, (0.08, 0.03, 0.06, 0.1)))) > 0.85
        assert score(thumbnail(rephotograph(im, (0.02, 0.07, 0.1, 0.0))), t) > 0.85
        assert score(t, thumbnail(ImageOps.mirror(im))) > 0.95
        assert score(t, thumbnail(ImageOps.grayscale(im).convert("RGB"))) > 0.9


def test_different_paintings_score_low_and_verify_keeps_only_copies(sample_dir):
    ims = paintings(sample_dir)
    thumbs = np.stack([thumbnail(im) for im in ims] + [thumbnail(rephotograph(ims[0], (0.05,) * 4))])
    others = [score(thumbs[i], thumbs[j]) for i in range(len(ims)) for j in range(i + 1, len(ims))]
    assert max(others) < 0.85
    pairs = np.array([[0, 1], [0, len(ims)], [2, 3]])
    assert verify(pairs, thumbs, 0.85).tolist() == [[0, len(ims)]]
