"""Why the model thinks so: Grad-CAM heat maps (Selvaraju et al. 2017).

The class score's gradient with respect to the feature maps of the backbone's last
convolutional block, averaged over space, weights those maps; their weighted sum, through a
ReLU and upsampled to the input, is where the evidence for the class lies. Plain autograd: a
forward hook keeps the block's output and ``torch.autograd.grad`` asks for the gradient of
one score with respect to it, so no parameter gradient is computed or stored (a model shared
by a server's threads is left untouched).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from artclf.errors import ArtclfError


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block of a torchvision backbone inside :class:`Classifier`."""
    net = getattr(model, "net", model)
    if hasattr(net, "layer4"):  # ResNet, ResNeXt, Wide ResNet
        return net.layer4
    if hasattr(net, "features"):  # MobileNet, EfficientNet, ConvNeXt, DenseNet, VGG, RegNet-free CNNs
        return net.features
    raise ArtclfError(f"Grad-CAM: no last convolutional block known for {type(net).__name__}")


def grad_cam(model: nn.Module, x: torch.Tensor, cls: int | None = None) -> tuple[torch.Tensor, int]:
    """Heat map (S×S floats in [0, 1]) of class ``cls`` (default: the top class) for one uint8
    image ``x`` (1×3×S×S), and the class. ``model`` in eval mode."""
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"grad_cam takes one image as a 1×3×S×S tensor, got {tuple(x.shape)}")
    kept: list[torch.Tensor] = []
    hook = target_layer(model).register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(x.clone())
            c = int(logits[0].argmax()) if cls is None else int(cls)
            (grad,) = torch.autograd.grad(logits[0, c], kept[-1])
    finally:
        hook.remove()
    acts = kept[-1].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(1, keepdim=True)).float()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    return (cam / top if top > 0 else cam), c


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45) -> Image.Image:
    """The heat map (matplotlib's ``jet``) over the uint8 3×S×S image the model saw."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam.numpy())[..., :3] * 255
    base = image.permute(1, 2, 0).numpy().astype(np.float64)
    return Image.fromarray(((1 - alpha) * base + alpha * heat).round().astype(np.uint8))


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
