"""Perceptual hashes: a 64-bit DCT hash (pHash) and a 64-bit gradient hash (dHash).

Both come from one small grayscale copy, so they survive resizing, re-encoding, colour
casts and grayscale conversion; the mirrored hash is kept too, so a flipped copy is
found by comparing it with the original's. Hashes are stored as ±1 float vectors: then
``dot(a, b) = BITS - 2·hamming(a, b)`` and the same blocked matrix search as for CNN
embeddings finds neighbours without an N×N table.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BITS = 128  # 64 pHash + 64 dHash
_N = 32  # pHash works on a 32×32 grayscale copy, keeps the 8×8 lowest frequencies


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix(_N)


def gray_thumb(im: Image.Image) -> np.ndarray:
    """The 32×32 grayscale thumbnail both hashes read (float32)."""
    return np.asarray(im.convert("L").resize((_N, _N), Image.Resampling.BOX), dtype=np.float32)


def _bits(thumb: np.ndarray) -> np.ndarray:
    coeffs = (_DCT @ thumb @ _DCT.T)[:8, :8].ravel()
    phash = coeffs[1:] > np.median(coeffs[1:])  # DC term says only "how bright"
    phash = np.concatenate([[coeffs[0] > coeffs[1:].mean()], phash])
    small = np.asarray(Image.fromarray(thumb).resize((9, 8), Image.Resampling.BOX))
    dhash = (small[:, 1:] > small[:, :-1]).ravel()
    return np.concatenate([phash, dhash])


def hash_pair(im: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(hash, hash of the mirrored image), each a ±1 float32 vector of length ``BITS``."""
    thumb = gray_thumb(im)
    plain, mirrored = _bits(thumb), _bits(thumb[:, ::-1].copy())
    return (plain * 2.0 - 1.0).astype(np.float32), (mirrored * 2.0 - 1.0).astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between ±1 hash vectors (last axis)."""
    return ((BITS - (a * b).sum(-1)) / 2).astype(np.int64)
