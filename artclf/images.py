"""Opening a painting the one way every stage does: EXIF orientation applied, then RGB.

Large JPEGs are decoded at reduced size with Pillow's ``draft`` (DCT scaling), so reading
an 11 MP scan to make a 576 px copy does not decode 11 MP.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence

from PIL import Image, ImageOps


class TooManyPixels(ValueError):
    """The header declares more pixels than the caller allows (a decompression bomb)."""


def open_rgb(
    src: str | os.PathLike | bytes,
    min_side: int | None = None,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    reduce_others: bool = False,
) -> Image.Image:
    """Decode ``src`` (path or bytes) upright and in RGB.

    ``min_side``: the caller will shrink the image until its shorter side is about this
    many pixels; JPEG decoding may then skip up to 7/8 of the work (never below it), and with
    ``reduce_others`` any other format is box-reduced by a whole factor right after decoding
    (never below it), so its full-size copy is gone before the RGB conversion copies it.
    ``max_pixels``: refuse (:class:`TooManyPixels`) before decoding when width × height from
    the header exceeds it; for untrusted uploads. ``formats``: Pillow format names to try
    (others raise ``UnidentifiedImageError``); for untrusted uploads, only the ones served.
    """
    f = io.BytesIO(src) if isinstance(src, bytes | bytearray) else src
    with warnings.catch_warnings():
        # ingest already marked images beyond the bomb limit unusable.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(f, formats=formats)
        except Image.DecompressionBombError as e:  # Pillow's own limit, 2 × MAX_IMAGE_PIXELS
            if max_pixels is None:
                raise
            raise TooManyPixels(f"{e} (limit {max_pixels})") from None
        if max_pixels is not None and im.width * im.height > max_pixels:
            n = im.width * im.height
            raise TooManyPixels(f"{im.width}×{im.height} = {n} pixels (limit {max_pixels})")
        if min_side and im.format == "JPEG":
            w, h = im.size
            scale = min_side / min(w, h)
            if scale < 1:
                im.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
        elif min_side and reduce_others and min(im.size) // min_side >= 2:
            if im.mode not in ("L", "LA", "I", "F", "RGB", "RGBA", "CMYK"):  # reduce refuses 1, P, I;16
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            im = im.reduce(min(im.size) // min_side)
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")
