"""images.open_rgb's pixel caps: a JPEG that decodes reduced is capped at its reduced decode and
its header only at a far higher ceiling; whatever decodes in full (PNG, progressive JPEG) is
capped at its declared size; Pillow's own bomb limit stays as it is for every other caller."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from artclf.images import TooManyPixels, open_rgb
from tests.support.jpeg import flat_jpeg

CAP = 25_000_000  # serve's --max-pixels
CEILING = 400_000_000  # serve's --max-declared-pixels
MIN_SIDE = 56  # the tests' model resize


def test_a_phone_size_jpeg_is_capped_at_its_reduced_decode():
    data = flat_jpeg(7000, 7000)  # 49 MP declared, 875 × 875 decoded at 1/8
    im = open_rgb(data, min_side=MIN_SIDE, max_pixels=CAP, max_declared_pixels=CEILING)
    assert im.size == (875, 875) and im.mode == "RGB"
    assert np.asarray(im).min() == np.asarray(im).max() == 128  # the flat grey it holds
    # the cap is on the decode: a cap below 875² refuses the same file, naming the decode
    with pytest.raises(TooManyPixels, match=r"875×875 .*decoded.*--max-pixels") as e:
        open_rgb(data, min_side=MIN_SIDE, max_pixels=875 * 875 - 1, max_declared_pixels=CEILING)
    assert not e.value.declared


def test_a_200_mp_jpeg_passes_without_touching_pillows_own_limit():
    limit = Image.MAX_IMAGE_PIXELS
    data = flat_jpeg(20000, 10000)
    assert 2 * limit < 20000 * 10000  # over Pillow's DecompressionBombError line
    im = open_rgb(data, min_side=MIN_SIDE, max_pixels=CAP, max_declared_pixels=CEILING)
    assert im.size == (2500, 1250)
    assert limit == Image.MAX_IMAGE_PIXELS  # not lowered or raised around the call
    with pytest.raises(Image.DecompressionBombError):  # other callers (ingest) still refused
        Image.open(io.BytesIO(data))
    with pytest.raises(Image.DecompressionBombError):  # and so is open_rgb without a ceiling
        open_rgb(data, min_side=MIN_SIDE)


def test_a_jpeg_header_over_the_ceiling_is_refused_before_decoding():
    head = flat_jpeg(25000, 20000, scan=False)  # 500 MP declared, no pixel data: never decoded
    with pytest.raises(TooManyPixels, match=r"25000×20000 .*declares.*--max-declared-pixels") as e:
        open_rgb(head, min_side=MIN_SIDE, max_pixels=CAP, max_declared_pixels=CEILING)
    assert e.value.declared


def progressive(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 30)).save(buf, "JPEG", quality=30, progressive=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, data",
    [
        ("progressive", progressive(600, 400)),
        ("components in separate scans", flat_jpeg(600, 400, first_scan=1)),
    ],
)
def test_a_jpeg_libjpeg_buffers_whole_is_capped_at_its_declared_size(kind, data):
    """libjpeg holds a progressive or multi-scan JPEG's coefficients for the whole image at any
    scale (jdcoefct.c's full-image buffer; 286 MB for a 49 MP 4:4:4 file here), so its header
    counts against the pixel cap, as a PNG's does."""
    assert open_rgb(data, min_side=MIN_SIDE, max_pixels=600 * 400, max_declared_pixels=CEILING).size
    with pytest.raises(TooManyPixels, match=r"600×400 = 240000 pixels.*--max-pixels") as e:
        open_rgb(data, min_side=MIN_SIDE, max_pixels=600 * 400 - 1, max_declared_pixels=CEILING)
    assert kind.split()[0] in str(e.value) and not e.value.declared


def test_a_png_keeps_the_pixel_cap_on_its_header():
    buf = io.BytesIO()
    Image.new("L", (700, 700)).save(buf, "PNG")
    with pytest.raises(
        TooManyPixels, match=r"PNG of 700×700 = 490000 pixels .*limit of 250000 .*--max-pixels"
    ):
        open_rgb(buf.getvalue(), min_side=MIN_SIDE, max_pixels=250_000, max_declared_pixels=CEILING)
