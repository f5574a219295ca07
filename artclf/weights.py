"""Pretrained weights without surprises on offline compute nodes.

``--weights`` takes a torchvision weights name (``IMAGENET1K_V2``), a local file, or
``none``. A name is looked up in torch hub's cache (``$TORCH_HOME/hub/checkpoints``) and
downloaded only if the cache lacks it; when that fails the error names the expected path,
``artclf weights fetch`` (run on a node with internet) and ``--weights PATH``. There is no
silent fallback to random weights: ``none`` must be asked for.

``artclf weights fetch --arch resnet50 --weights IMAGENET1K_V2`` fills the cache.
"""

from __future__ import annotations

import pickletools
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from artclf.config import arg, stage_main
from artclf.errors import ArtclfError

NONE = "none"


def _enum(arch: str, name: str):
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ArtclfError(
            f"--arch {arch}: not a torchvision model; see torchvision.models.list_models()"
        ) from None
    try:
        return enum[name]
    except KeyError:
        known = ", ".join(w.name for w in enum)
        raise ArtclfError(
            f"--weights {name}: not a file and not a weights name of {arch} ({known})"
        ) from None


def cache_path(arch: str, name: str) -> Path:
    """Where torch hub keeps the file of a torchvision weights name."""
    url = _enum(arch, name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _download(arch: str, name: str) -> Path:
    path = cache_path(arch, name)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(_enum(arch, name).url, str(path), progress=False)
        except OSError as e:  # URLError, socket errors, read-only cache
            raise ArtclfError(
                f"weights {arch}/{name} not found at {path} and the download failed ({e}); "
                f"run `artclf weights fetch --arch {arch} --weights {name}` on a node with internet "
                f"(same TORCH_HOME), or pass --weights PATH to a local state-dict file"
            ) from None
    return path


def state_dict(arch: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The state dict ``weights`` names for ``arch``; ``None`` for ``none`` (with a warning)."""
    if weights.lower() == NONE:
        warnings.warn(f"--weights none: {arch} starts from random weights", stacklevel=2)
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        if "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise ArtclfError(f"--weights {weights}: file not found")
        path = _download(arch, weights)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated file, not a torch file
        raise ArtclfError(
            f"{path}: not a loadable weights file: {refused(path, e)}; pass a state dict saved with "
            "torch.save(model.state_dict(), FILE)"
        ) from None
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtclfError(f"{path}: expected a state dict (name -> tensor)")
    return obj


def refused(path: Path, error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, without torch's advice to retry
    with ``weights_only=False`` (that runs whatever the file holds): the code it would import,
    read without running it. Shared by ``--weights FILE`` and ``model.pt`` loading."""
    code = _pickled_globals(path)
    if code:
        return f"it holds pickled code ({', '.join(code[:3])}), which artclf never runs"
    return f"a damaged or foreign file ({type(error).__name__})"


def _pickled_globals(path: Path) -> list[str]:
    """The functions and classes a pickle (plain, or a torch zip's ``data.pkl``) would import,
    listed with pickletools (which reads, never runs); torch's own are left out."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings = [*strings[-1:], arg]
            elif op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                found.append(".".join(strings))
    except Exception:  # noqa: BLE001  (a damaged pickle: nothing to name)
        return []
    return sorted({g for g in found if not g.startswith(("torch.", "collections.OrderedDict"))})


def head_name(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the final classification layer of a torchvision classifier."""
    for name in ("fc", "classifier", "heads", "head"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            return name, mod
        if isinstance(mod, nn.Sequential):
            last = [(n, m) for n, m in mod.named_children() if isinstance(m, nn.Linear)]
            if last:
                return f"{name}.{last[-1][0]}", last[-1][1]
    raise ArtclfError(f"{type(model).__name__}: cannot find its classification layer (fc/classifier/heads)")


def build(arch: str, weights: str | None, num_classes: int | None = None) -> nn.Module:
    """A torchvision model with ``weights`` loaded; its head replaced when ``num_classes``
    is given, removed (global-pool features out) when it is ``0``. ``weights=None``: random
    initialisation without a warning, for a caller that loads its own state dict next."""
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        raise ArtclfError(
            f"--arch {arch}: not a torchvision model; see torchvision.models.list_models()"
        ) from None
    sd = state_dict(arch, weights) if weights is not None else None
    head, _ = head_name(model)
    if sd is not None:
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith(head + ".")]
        if missing or unexpected:
            raise ArtclfError(
                f"--weights {weights}: does not fit {arch}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    if num_classes is not None:
        parent_name, _, leaf = head.rpartition(".")
        parent = model.get_submodule(parent_name)  # "" is the model itself
        old = parent.get_submodule(leaf)
        # setattr also replaces a Sequential's item ("1"): it is registered under that name.
        setattr(parent, leaf, nn.Linear(old.in_features, num_classes) if num_classes else nn.Identity())
    return model


@dataclass(frozen=True)
class FetchConfig:
    action: str = field(metadata=arg("'fetch': download into torch hub's cache", positional=True))
    arch: str = field(default="resnet50", metadata=arg("torchvision model name"))
    weights: str = field(default="IMAGENET1K_V2", metadata=arg("torchvision weights name"))

    def __post_init__(self) -> None:
        if self.action != "fetch":
            raise ValueError(f"unknown action {self.action!r}; the only one is 'fetch'")


def fetch(cfg: FetchConfig) -> Path:
    path = _download(cfg.arch, cfg.weights)
    print(f"{cfg.arch}/{cfg.weights}: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    return stage_main(FetchConfig, fetch, "artclf weights", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
