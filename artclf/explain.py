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
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.fx
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


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
