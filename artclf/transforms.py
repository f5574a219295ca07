"""Image → tensor, the one place it is defined; train, evaluate, predict and serve import it.

The data path hands the model **uint8** CHW tensors: geometry (crop, resize, flip) happens
here on the CPU, while scaling to [0, 1] and ImageNet normalisation are the model's first
layer (:class:`Normalize`). That keeps loader workers cheap, sends a quarter of the bytes
to the GPU, and puts normalisation inside every exported model, so serving cannot skew.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

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


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 CHW tensor (no copy of the pixel math, one of the memory)."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def eval_image(im: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Shorter side to ``pre.resize``, centre crop ``pre.image_size``: evaluate, predict, serve."""
    scale = pre.resize / min(im.size)
    im = im.resize(
        (max(pre.image_size, round(im.width * scale)), max(pre.image_size, round(im.height * scale))),
        Image.Resampling.BILINEAR,
        reducing_gap=2.0,
    )
    left, top = (im.width - pre.image_size) // 2, (im.height - pre.image_size) // 2
    return to_uint8_tensor(im.crop((left, top, left + pre.image_size, top + pre.image_size)))


def train_image(
    im: Image.Image,
    pre: Preprocess,
    flip: bool,
    rng: random.Random,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random crop of ``scale`` of the area and ``ratio`` aspect, resized to ``image_size``;
    mirrored with probability 1/2 when ``flip`` (only the classes chosen for flipping)."""
    w, h = im.size
    for _ in range(10):  # torchvision's RandomResizedCrop sampling
        area = w * h * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    size = (pre.image_size, pre.image_size)
    im = im.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch), reducing_gap=2.0)
    if flip and rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_uint8_tensor(im)


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
