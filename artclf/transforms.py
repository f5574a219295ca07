"""Image → tensor, the one place it is defined; train, evaluate, predict and serve import it.

The data path hands the model **uint8** CHW tensors: geometry (crop, resize, flip) happens
here on the CPU, while scaling to [0, 1] and ImageNet normalisation are the model's first
layer (:class:`Normalize`). That keeps loader workers cheap, sends a quarter of the bytes
to the GPU, and puts normalisation inside every exported model, so serving cannot skew.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch import nn
from torchvision.io import ImageReadMode, decode_jpeg

# torchvision's ImageNet weights were trained with these (torchvision.transforms._presets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Everything inference needs to prepare an image; saved inside ``model.pt``."""

    image_size: int = 512  # px, square model input
    resize: int = 512  # px, shorter side before the centre crop (eval, predict, serve)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Inverse of ``to_dict`` (JSON and torch.load give lists back for the tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 CHW tensor."""
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def decode(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> upright RGB uint8 CHW tensor.

    Shards hold upright RGB JPEGs, which libjpeg-turbo decodes straight into a tensor
    (``torchvision.io.decode_jpeg``, about 2x faster than Pillow plus conversion); anything
    else goes the general way (:func:`artclf.images.open_rgb`: EXIF, CMYK, PNG, …).
    """
    if is_jpeg(data):
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # unusual JPEG (e.g. arithmetic coding): Pillow below
    from artclf.images import open_rgb

    return to_uint8_tensor(open_rgb(data))


def _eval_size(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """(height, width) ``eval_image`` resizes an h×w picture to before its centre crop."""
    scale = pre.resize / min(h, w)
    return max(pre.image_size, round(h * scale)), max(pre.image_size, round(w * scale))


def eval_image(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Shorter side to ``pre.resize``, centre crop ``pre.image_size``: evaluate, predict, serve."""
    x = F.resize(x, list(_eval_size(*x.shape[-2:], pre)), antialias=True)
    return F.center_crop(x, [pre.image_size, pre.image_size])


def eval_crop_box(width: int, height: int, pre: Preprocess) -> tuple[float, float, float, float]:
    """Where ``eval_image``'s square lies in a width×height picture: (left, top, right, bottom)
    in the picture's pixels, the resize undone; heat maps mark on the whole picture what the
    model saw."""
    rh, rw = _eval_size(height, width, pre)
    s = pre.image_size
    top, left = round((rh - s) / 2), round((rw - s) / 2)  # torchvision's center_crop anchor
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + s) * sx, (top + s) * sy


def train_image(
    x: torch.Tensor,
    pre: Preprocess,
    flip: bool,
    rng: random.Random,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random crop of ``scale`` of the area and ``ratio`` aspect, resized to ``image_size``;
    mirrored with probability 1/2 when ``flip`` (only the classes chosen for flipping)."""
    h, w = x.shape[-2:]
    for _ in range(10):  # torchvision's RandomResizedCrop sampling, with our own RNG
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(w, h)
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    x = F.resized_crop(x, top, left, ch, cw, [pre.image_size, pre.image_size], antialias=True)
    if flip and rng.random() < 0.5:
        x = x.flip(-1)
    return x


def train_batch_on_device(
    images: list[torch.Tensor],
    labels: list[int],
    pre: Preprocess,
    flip: frozenset[int],
    rngs: list[random.Random],
    device: torch.device | str,
) -> tuple[torch.Tensor, list[int]]:
    """The GPU decode path (``artclf train --gpu-decode``): a batch's encoded JPEGs (1-D uint8)
    decoded together on ``device`` (nvJPEG on CUDA), each then cropped and flipped by
    :func:`train_image` there, item ``i`` drawing from ``rngs[i]``. Items that are already
    decoded (3-D, a worker's work) pass through. Returns (N×3×S×S uint8 on ``device``,
    indices of the items that failed to decode).
    """
    encoded = [i for i, x in enumerate(images) if x.ndim == 1]
    decoded = {i: x.to(device, non_blocking=True) for i, x in enumerate(images) if x.ndim == 3}
    failed: list[int] = []
    if encoded:
        try:
            outs = decode_jpeg([images[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
            decoded.update(zip(encoded, outs, strict=True))
        except RuntimeError:  # one bad JPEG fails the whole call: decode one by one, drop the bad
            for i in encoded:
                try:
                    decoded[i] = decode_jpeg(images[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    failed.append(i)
    out = [
        x if images[i].ndim == 3 else train_image(x, pre, labels[i] in flip, rngs[i])
        for i, x in sorted(decoded.items())
    ]
    empty = torch.empty(0, 3, pre.image_size, pre.image_size, dtype=torch.uint8, device=device)
    return (torch.stack(out) if out else empty), failed


class Normalize(nn.Module):
    """uint8 (or float 0..255) images -> ImageNet-normalised float; the model's first layer."""

    def __init__(
        self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ) -> None:
        super().__init__()
        self.register_buffer("scale", 1 / (255 * torch.tensor(std).view(1, -1, 1, 1)), persistent=False)
        self.register_buffer(
            "shift",
            -torch.tensor(mean).view(1, -1, 1, 1) / torch.tensor(std).view(1, -1, 1, 1),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.scale.dtype) * self.scale + self.shift


def normalize(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float CHW tensor, ImageNet-normalised (for code outside a model)."""
    return Normalize()(to_uint8_tensor(im)[None])[0]


def whole_image(im: Image.Image, size: int) -> torch.Tensor:
    """The whole picture squeezed to ``size``×``size`` (no crop): what dedup embeds, so a
    cropped re-photograph still shows most of what the original shows."""
    return normalize(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
