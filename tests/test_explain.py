"""Heat maps people can read: where the model's centre crop lies in the picture (the inverse of
the evaluation transform), the Grad-CAM drawn over the whole picture at its own aspect ratio with
the crop marked, and ``artclf predict --explain`` writing it at a readable size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from artclf import predict
from artclf.transforms import Preprocess, eval_image

ASPECT_TOLERANCE = 0.02  # the bound: a heat map within 2 % of the upload's aspect ratio


def aspect(w: float, h: float) -> float:
    return w / h


def centred_square(w: int, h: int, pre: Preprocess) -> tuple[float, ...]:
    """Reference by plain geometry: the crop is ``image_size`` of ``resize`` px of the shorter side,
    centred (exact when the resize and the centring need no rounding)."""
    side = pre.image_size * min(w, h) / pre.resize
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


@pytest.mark.parametrize(
    ("w", "h", "pre"),
    [
        (1000, 500, Preprocess(image_size=48, resize=64)),  # landscape, crop inside on every side
        (300, 600, Preprocess(image_size=48, resize=48)),  # portrait, crop spans the width
        (512, 512, Preprocess(image_size=512, resize=576)),  # the published recipe's ratio, square
    ],
)
def test_crop_box_is_the_centred_square_of_the_shorter_side(w, h, pre):
    from artclf.transforms import eval_crop_box

    assert eval_crop_box(w, h, pre) == pytest.approx(centred_square(w, h, pre), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("w", "h"), [(997, 461), (333, 1001), (640, 480), (481, 479)])
def test_crop_box_is_where_the_model_input_samples_the_picture(w, h):
    """Any size (rounding included): a picture whose pixels hold their own coordinates, through
    ``eval_image``; each model pixel must show the picture at the place the box maps it to."""
    from artclf.transforms import eval_crop_box

    pre = Preprocess(image_size=48, resize=56)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    seen = eval_image(torch.stack([xs, ys, xs]), pre)
    left, top, right, bottom = eval_crop_box(w, h, pre)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert right - left == pytest.approx(bottom - top, rel=0.02)  # a square of the picture
    centres = torch.arange(pre.image_size, dtype=torch.float64) + 0.5
    want_x = left + centres * (right - left) / pre.image_size - 0.5
    want_y = top + centres * (bottom - top) / pre.image_size - 0.5
    inner = slice(4, -4)  # the resize's filter clamps at the picture's border: compare inside it
    step = (right - left) / pre.image_size  # picture px per model px
    assert (seen[0, 24, inner] - want_x[inner]).abs().max() < 0.05 * step + 0.01
    assert (seen[1, inner, 24] - want_y[inner]).abs().max() < 0.05 * step + 0.01


@pytest.mark.parametrize(("w", "h"), [(80, 60), (60, 80), (1200, 600), (3000, 1000), (700, 2100)])
def test_heat_map_covers_the_picture_at_its_aspect_with_the_crop_heated(w, h):
    from matplotlib import colormaps

    from artclf.explain import HEAT_MAP_SIDES, over_picture
    from artclf.transforms import eval_crop_box

    pre = Preprocess(image_size=48, resize=56)
    picture = torch.full((3, h, w), 200, dtype=torch.uint8)
    cam = torch.ones(pre.image_size, pre.image_size)  # the whole crop at the map's top
    box = eval_crop_box(w, h, pre)
    im = over_picture(picture, cam, box)
    lo, hi = HEAT_MAP_SIDES
    assert lo >= 512 and max(im.size) == min(max(lo, max(w, h)), hi)
    assert abs(aspect(*im.size) / aspect(w, h) - 1) < ASPECT_TOLERANCE
    a = np.asarray(im.convert("RGB")).astype(int)
    k = im.width / w
    cx, cy = round((box[0] + box[2]) / 2 * k), round((box[1] + box[3]) / 2 * k)
    jet = np.asarray(colormaps["jet"](1.0)[:3]) * 255
    assert np.abs(a[cy, cx] - (0.55 * 200 + 0.45 * jet)).max() <= 1  # heated inside the crop
    if box[0] * k > 20:  # the crop leaves room on the left: there the picture is dimmed, unheated
        outside = a[cy, : int(box[0] * k) - 10]
        assert (outside == outside[0]).all() and (outside[0] == outside[0, 0]).all()  # one grey
        assert 40 <= outside[0, 0] < 150


def test_predict_explain_writes_the_whole_picture_at_a_readable_size(model_pt, images, tmp_path, capsys):
    wide = tmp_path / "in" / "wide.jpg"
    wide.parent.mkdir()
    a = np.zeros((150, 300, 3), np.uint8)
    a[:, :, 0] = np.linspace(0, 255, 300, dtype=np.uint8)
    a[40:110, 120:180] = (250, 250, 40)
    Image.fromarray(a).save(wide, quality=95)
    out = tmp_path / "why"
    inputs = [str(p) for p in (wide, images / "upright.jpg", images / "exif_rotated.jpg")]
    code = predict.main(["--model", str(model_pt), *inputs, "--format", "json", "--explain", str(out)])
    assert code == 0
    for r in json.loads(capsys.readouterr().out):
        with Image.open(r["path"]) as given, Image.open(r["explanation"]) as drawn:
            given_size = given.size if "rotated" not in r["path"] else given.size[::-1]  # EXIF: upright
            assert max(drawn.size) >= 512, f"{r['explanation']}: {drawn.size} for a {given_size} image"
            ratio = aspect(*drawn.size) / aspect(*given_size)
            assert abs(ratio - 1) < ASPECT_TOLERANCE, f"{drawn.size} drawn for a {given_size} image"
