"""Why the model thinks so: Grad-CAM heat maps (Selvaraju et al. 2017).

The class score's gradient with respect to the feature maps of the backbone's last
convolutional block, averaged over space, weights those maps; their weighted sum, through a
ReLU and upsampled to the input, is where the evidence for the class lies.

No hook on the model: :class:`GradCam` traces the model's forward once (``torch.fx``, the last
block one opaque step) into a module that calls the model's own submodules, so it shares every
weight (no second copy) and leaves the model as it was. Each heat map runs that forward without
autograd up to the block and with it from the block's output on, a leaf ``torch.autograd.grad``
asks the score's gradient of: only the head is recorded (a heat map holds about the memory of a
prediction) and no parameter gradient is computed or stored, so threads predicting with the
same model meanwhile (a server's) neither see nor disturb a heat map. Tracing patches
``nn.Module`` for its duration, so a :class:`GradCam` is built before other threads use the
model; calling it is thread-safe.

What people see (:func:`heat_map`, the one drawing ``artclf predict --explain`` and
``artclf serve`` share): the whole picture as it was given, upright, at its own aspect ratio
and a readable size, the map laid into the centre square the model looked at
(:func:`artclf.transforms.eval_crop_box`), the rest dimmed and the square outlined; not the
S×S crop alone, which hides the sides of every painting that is not square.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from artclf.errors import ArtclfError
from artclf.transforms import Preprocess, eval_crop_box, eval_image

# px, the long side of a heat map: a 48 or 512 px crop is too small to read, and a phone's
# 8000 px photo is more than a screen shows (Pillow's LANCZOS keeps detail either way).
HEAT_MAP_SIDES = (512, 1024)
DIM = 0.45  # brightness left outside the crop: the picture stays recognisable, clearly unheated


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block of a torchvision backbone inside :class:`Classifier`."""
    net = getattr(model, "net", model)
    if hasattr(net, "layer4"):  # ResNet, ResNeXt, Wide ResNet
        return net.layer4
    if hasattr(net, "features"):  # MobileNet, EfficientNet, ConvNeXt, DenseNet, VGG, RegNet-free CNNs
        return net.features
    raise ArtclfError(f"Grad-CAM: no last convolutional block known for {type(net).__name__}")


class _FromTheLayerOn(torch.fx.Interpreter):
    """One run of the traced forward: without autograd up to ``layer``, with it from its output on."""

    def __init__(self, net: torch.fx.GraphModule, layer: torch.fx.Node) -> None:
        super().__init__(net)
        self.layer, self.acts = layer, None

    def run_node(self, n: torch.fx.Node):
        with torch.set_grad_enabled(self.acts is not None):
            out = super().run_node(n)
        if n is self.layer:
            self.acts = out.detach().requires_grad_()
            with torch.enable_grad():
                out = self.acts.clone()  # what follows may work in place (DenseNet's ReLU)
        return out


class GradCam:
    """Grad-CAM of ``model`` (in eval mode): ``GradCam(model)(x, cls)``."""

    def __init__(self, model: nn.Module) -> None:
        layer = target_layer(model)
        name = next(n for n, m in model.named_modules() if m is layer)

        class Tracer(torch.fx.Tracer):  # the last block, and what holds no part of it, are steps
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return m is layer or all(s is not layer for s in m.modules())

        try:
            graph = Tracer().trace(model)
        except Exception as e:  # a forward with data-dependent control flow
            raise ArtclfError(
                f"Grad-CAM: cannot trace {type(model).__name__}: {type(e).__name__}: {e}"
            ) from None
        calls = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            raise ArtclfError(f"Grad-CAM: {name} is called {len(calls)} times in the forward, not once")
        self.layer = calls[0]
        self.net = torch.fx.GraphModule(model, graph, class_name="GradCamNet")  # model's own tensors

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output for uint8 images ``x`` (a leaf that requires grad) and the logits,
        recorded from that leaf on."""
        run = _FromTheLayerOn(self.net, self.layer)
        with torch.inference_mode(False):
            logits = run.run(x.clone())
        return run.acts, logits

    def __call__(self, x: torch.Tensor, cls: int | None = None) -> tuple[torch.Tensor, int]:
        """Heat map (S×S floats in [0, 1]) of class ``cls`` (default: the top class) for one
        uint8 image ``x`` (1×3×S×S), and the class."""
        if x.dim() != 4 or len(x) != 1:
            raise ValueError(f"grad_cam takes one image as a 1×3×S×S tensor, got {tuple(x.shape)}")
        with torch.inference_mode(False):
            acts, logits = self.scores(x)
            c = int(logits[0].argmax()) if cls is None else int(cls)
            (grad,) = torch.autograd.grad(logits[0, c], acts)
        acts = acts.detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts).sum(1, keepdim=True)).float()
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
        top = cam.max()
        return (cam / top if top > 0 else cam), c


def grad_cam(model: nn.Module, x: torch.Tensor, cls: int | None = None) -> tuple[torch.Tensor, int]:
    """``GradCam(model)(x, cls)`` for one image (traces ``model`` each call: a few ms)."""
    return GradCam(model)(x, cls)


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45) -> Image.Image:
    """The heat map (matplotlib's ``jet``) over the uint8 3×S×S image the model saw."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam.numpy())[..., :3] * 255
    base = image.permute(1, 2, 0).numpy().astype(np.float64)
    return Image.fromarray(((1 - alpha) * base + alpha * heat).round().astype(np.uint8))


def over_picture(
    picture: torch.Tensor,
    cam: torch.Tensor,
    box: tuple[float, float, float, float],
    sides: tuple[int, int] = HEAT_MAP_SIDES,
) -> Image.Image:
    """The heat map ``cam`` of the crop at ``box`` (left, top, right, bottom in the picture's px)
    laid into the uint8 3×H×W ``picture``, the rest dimmed, the crop outlined; scaled so that
    the long side lies within ``sides``, the aspect ratio kept."""
    h, w = picture.shape[-2:]
    k = min(max(max(w, h), sides[0]), sides[1]) / max(w, h)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    base = Image.fromarray(picture.permute(1, 2, 0).numpy()).resize(size, Image.Resampling.LANCZOS)
    kx, ky = size[0] / w, size[1] / h
    left, right = round(box[0] * kx), max(round(box[2] * kx), round(box[0] * kx) + 1)
    top, bottom = round(box[1] * ky), max(round(box[3] * ky), round(box[1] * ky) + 1)
    heat = F.interpolate(cam[None, None].float(), size=(bottom - top, right - left), mode="bilinear")[0, 0]
    a = np.asarray(base)
    inside = torch.from_numpy(a[top:bottom, left:right].copy()).permute(2, 0, 1)
    out = Image.fromarray((a * DIM).round().astype(np.uint8))
    out.paste(overlay(inside, heat), (left, top))
    line = max(2, round(max(size) / 256))  # outside the crop, so no heat is covered
    ImageDraw.Draw(out).rectangle(
        (left - line, top - line, right - 1 + line, bottom - 1 + line), outline="white", width=line
    )
    return out


def heat_map(cam_of, picture: torch.Tensor, pre: Preprocess) -> tuple[Image.Image, int]:
    """What people are shown: Grad-CAM of the top class for the model's input from ``picture``
    (uint8 3×H×W, upright, as decoded), drawn over the whole picture (:func:`over_picture`); and
    the class. ``cam_of``: a :class:`GradCam`, or anything called like it."""
    cam, c = cam_of(eval_image(picture, pre)[None])
    h, w = picture.shape[-2:]
    return over_picture(picture, cam, eval_crop_box(w, h, pre)), c


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
