"""Image → tensor, the one place it is defined (ImageNet statistics, resizing)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# torchvision's ImageNet weights were trained with these (torchvision.transforms._presets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float CHW tensor, ImageNet-normalised."""
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def whole_image(im: Image.Image, size: int) -> torch.Tensor:
    """The whole picture squeezed to ``size``×``size`` (no crop): what dedup embeds, so a
    cropped re-photograph still shows most of what the original shows."""
    return normalize(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
