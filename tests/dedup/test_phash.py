"""Perceptual hash: a resized + re-encoded copy is near, a different painting is far."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from artclf.dedup.phash import BITS, hamming, hash_pair

THRESHOLD = 20  # dedup's default --hash-threshold


def reencode(im: Image.Image, scale: float, quality: int) -> Image.Image:
    small = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def paintings(sample_dir: Path) -> list[Image.Image]:
    """Twelve distinct paintings: no planted copy, no odd file, not the duplicate folder."""
    truth = json.loads((sample_dir / "sample_truth.json").read_text())
    planted = {m["path"] for g in truth["duplicate_groups"] for m in g["members"]}
    planted |= {o["path"] for o in truth["odd_files"]}
    files = [
        p
        for folder in truth["folders"].values()
        for p in sorted((sample_dir / folder).iterdir())
        if p.relative_to(sample_dir).as_posix() not in planted
    ]
    return [Image.open(f).convert("RGB") for f in files[:: max(1, len(files) // 12)][:12]]


def test_resized_reencoded_copy_is_near(sample_dir):
    for im in paintings(sample_dir):
        h, _ = hash_pair(im)
        h2, _ = hash_pair(reencode(im, 0.6, 60))
        assert hamming(h, h2) <= THRESHOLD


def test_grayscale_and_mirrored_copies_are_near(sample_dir):
    for im in paintings(sample_dir):
        h, hf = hash_pair(im)
        g, _ = hash_pair(ImageOps.grayscale(im).convert("RGB"))
        m, _ = hash_pair(ImageOps.mirror(im))
        assert hamming(h, g) <= THRESHOLD
        assert hamming(hf, m) <= THRESHOLD  # the mirrored hash of the original finds the flip


def test_different_paintings_are_far(sample_dir):
    ims = paintings(sample_dir)
    hashes = [hash_pair(im)[0] for im in ims]
    dists = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(dists) > THRESHOLD
    assert np.mean(dists) > BITS / 4
