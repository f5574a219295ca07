"""Opening a painting the one way every stage does: EXIF orientation applied, then RGB.

Large JPEGs are decoded at reduced size with Pillow's ``draft`` (DCT scaling), so reading
an 11 MP scan to make a 576 px copy does not decode 11 MP.

Pixel caps for untrusted images (``artclf serve``, ``artclf predict``) count what is decoded,
not what is declared: a baseline JPEG counts at its draft scale (a 48 MP phone photo decodes
at 1/8, 0.8 MP), so its header needs only a far higher ceiling that still stops bombs;
whatever decodes in full (PNG, WebP, TIFF, BMP, GIF, and the JPEGs libjpeg holds whole at any
scale) counts at its header's width × height.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Sequence
from typing import IO

from PIL import Image, ImageOps, JpegImagePlugin

JPEGS = ("JPEG", "MPO")  # MPO: a phone's JPEG with a second frame; the first decodes as a JPEG
# The largest header a JPEG may declare when it decodes reduced: phones write up to 200 MP;
# at 1/8 scale 400 MP is a 6 MP decode, but libjpeg still walks every block of it (CPU time).
DECLARED_CEILING = 400_000_000


class TooManyPixels(ValueError):
    """More pixels than the caller allows, found before decoding (a decompression bomb).
    ``declared``: a JPEG header over ``--max-declared-pixels``; otherwise the decode would be
    over ``--max-pixels`` (the flags of serve and predict that set the two caps)."""

    def __init__(self, message: str, declared: bool = False) -> None:
        super().__init__(message)
        self.declared = declared


def open_rgb(
    src: str | os.PathLike | bytes,
    min_side: int | None = None,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    reduce_others: bool = False,
    max_declared_pixels: int | None = None,
) -> Image.Image:
    """Decode ``src`` (path or bytes) upright and in RGB.

    ``min_side``: the caller will shrink the image until its shorter side is about this
    many pixels; JPEG decoding may then skip up to 7/8 of the work (never below it), and with
    ``reduce_others`` any other format is box-reduced by a whole factor right after decoding
    (never below it), so its full-size copy is gone before the RGB conversion copies it.
    ``max_pixels``: refuse (:class:`TooManyPixels`) before decoding when width × height from
    the header exceeds it; for untrusted uploads. ``max_declared_pixels``: count a JPEG that
    decodes reduced at its draft scale against ``max_pixels`` instead, and refuse only headers
    above this ceiling (Pillow's own bomb limit, a module global, is not applied to such a JPEG;
    without a ceiling it is, as for every other caller). ``formats``: Pillow format names to try
    (others raise ``UnidentifiedImageError``); for untrusted uploads, only the ones served.
    """
    ceiling = max_declared_pixels
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        # ingest already marked images beyond the bomb limit unusable.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if isinstance(src, bytes | bytearray):
            f = io.BytesIO(src)
        else:
            f = stack.enter_context(open(src, "rb")) if ceiling is not None else src
        im = _open(f, formats, max_pixels, jpeg_unchecked=ceiling is not None)
        if ceiling is not None and im.format in JPEGS:
            n, what = _draft_within(im, f, min_side, ceiling)
        else:
            n = im.width * im.height
            what = f"{im.format} of {im.width}×{im.height} = {n} pixels"
            what += "" if im.format in JPEGS else " decodes in full"
            if min_side and im.format in JPEGS:
                _draft(im, min_side)
        cap = max_pixels if max_pixels is not None or ceiling is None else _pillow_limit()
        if cap is not None and n > cap:
            raise TooManyPixels(f"{what}, over the limit of {cap} pixels decoded (--max-pixels)")
        if min_side and reduce_others and im.format not in JPEGS and min(im.size) // min_side >= 2:
            if im.mode not in ("L", "LA", "I", "F", "RGB", "RGBA", "CMYK"):  # reduce refuses 1, P, I;16
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            im = im.reduce(min(im.size) // min_side)
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def _draft(im: Image.Image, min_side: int) -> None:
    w, h = im.size
    scale = min_side / min(w, h)
    if scale < 1:
        im.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))


def _draft_within(im: Image.Image, f: IO[bytes], min_side: int | None, ceiling: int) -> tuple[int, str]:
    """Refuses a JPEG header over ``ceiling``; drafts the JPEG for ``min_side``; returns the
    pixels its decode will hold and what they are, for the caller's cap."""
    w, h = im.size
    if w * h > ceiling:
        raise TooManyPixels(
            f"{im.format} of {w}×{h} = {w * h} pixels declares more than the limit of {ceiling} for a "
            "JPEG header (--max-declared-pixels; beyond any camera: a decompression bomb)",
            declared=True,
        )
    held = _held_whole(f)
    if min_side:
        _draft(im, min_side)
    if held:
        return (
            w * h,
            f"{held} of {w}×{h} = {w * h} pixels decodes in full (libjpeg holds it whole at any scale)",
        )
    n = im.width * im.height
    return n, f"{im.format} of {w}×{h} decodes at {im.width}×{im.height} = {n} pixels"


def _pillow_limit() -> int | None:
    """Pillow's DecompressionBombError line, read (never set) at the call."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


def _open(f, formats: Sequence[str] | None, max_pixels: int | None, jpeg_unchecked: bool) -> Image.Image:
    """``Image.open``; with ``jpeg_unchecked`` a JPEG is opened by Pillow's JPEG factory itself,
    which is ``Image.open`` without its bomb check: that check reads ``Image.MAX_IMAGE_PIXELS``,
    a global that serve's decoding threads and every other caller share, so raising it around
    one call is not safe; the caller checks the header against its own ceiling instead."""
    if jpeg_unchecked and (formats is None or "JPEG" in formats):
        head = f.read(3)
        f.seek(0)
        if head == b"\xff\xd8\xff":
            try:
                return JpegImagePlugin.jpeg_factory(f)
            except Exception:  # not a JPEG after all: Image.open says so as it always does
                f.seek(0)
    try:
        return Image.open(f, formats=formats)
    except Image.DecompressionBombError as e:  # Pillow's own limit, 2 × MAX_IMAGE_PIXELS
        if max_pixels is None:
            raise
        raise TooManyPixels(f"{e} (limit {max_pixels}, --max-pixels)") from None


def _held_whole(f: IO[bytes]) -> str | None:
    """Why libjpeg will hold this JPEG's whole image whatever the draft scale, or None when it
    decodes it band by band. It keeps every block's coefficients (2 B each, 286 MB for a 49 MP
    4:4:4 file) for a progressive frame or when the first scan leaves components out
    (libjpeg's jdinput.c, ``has_multiple_scans``), and does not scale lossless JPEG."""
    f.seek(2)  # after SOI; Pillow has read up to the first scan without an error
    frame = None
    while b := f.read(1):
        if b != b"\xff":
            continue  # junk between segments
        m = f.read(1)
        while m == b"\xff":  # fill bytes before a marker
            m = f.read(1)
        if not m or m[0] in (0x00, 0x01) or 0xD0 <= m[0] <= 0xD8:
            continue  # no length follows these
        raw = f.read(2)
        if len(raw) < 2:
            return None
        segment = f.read(max(0, struct.unpack(">H", raw)[0] - 2))
        if m[0] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB) and len(segment) > 5:  # SOFn
            frame = m[0], segment[5]
        elif m[0] == 0xDA and frame is not None and segment:  # the first scan
            sof, components = frame
            if sof in (0xC2, 0xCA):
                return "progressive JPEG"
            if sof in (0xC3, 0xCB):
                return "lossless JPEG"
            return "JPEG with its components in separate scans" if segment[0] < components else None
    return None
