"""The classifier and ``model.pt``: a torchvision backbone behind a normalisation layer.

``model.pt`` holds plain data only (tensors, dicts, lists, strings, numbers), so it loads
with ``torch.load(weights_only=True)``: a file that carries code is refused, not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from artclf.atomic import atomic_open
from artclf.errors import ArtclfError
from artclf.transforms import Normalize, Preprocess
from artclf.weights import build

FORMAT = "artclf-model-1"


class Classifier(nn.Module):
    """uint8 (or 0..255 float) NCHW images -> logits; normalisation is part of the model, and so
    is the calibration temperature (logits / T: 1 while training, fitted on val into ``model.pt``
    by :mod:`artclf.metrics.calibration`), so evaluate, predict, an exported graph and serve all use it."""

    def __init__(self, net: nn.Module, pre: Preprocess) -> None:
        super().__init__()
        self.normalize = Normalize(pre.mean, pre.std)
        self.net = net
        # not in the state dict: model.pt keeps it under "calibration", checkpoints never carry it
        self.register_buffer("temperature", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x)) / self.temperature


def build_model(arch: str, weights: str | None, num_classes: int, pre: Preprocess) -> Classifier:
    """``arch`` with ``weights`` (name, file or none) and a fresh ``num_classes`` head."""
    return Classifier(build(arch, weights, num_classes=num_classes), pre)


def save_model(
    path: Path, model: nn.Module, classes: list[str], pre: Preprocess, arch: str, extra: dict
) -> None:
    """Atomically write ``model.pt`` (weights on CPU, classes, preprocessing, recipe)."""
    state = plain_state_dict(model.state_dict())
    blob = {
        "format": FORMAT,
        "arch": arch,
        "classes": list(classes),
        "preprocess": pre.to_dict(),
        "state_dict": state,
        **extra,
    }
    with atomic_open(path, "wb") as f:
        torch.save(blob, f)


def plain_state_dict(state: dict) -> dict:
    """Weights on CPU under the module's own names: ``torch.compile``'s wrapper adds
    ``_orig_mod.`` to every key (anywhere in the path), which a plain model cannot load."""
    return {k.replace("_orig_mod.", ""): v.detach().cpu() for k, v in state.items()}


def load_model(
    path: Path, map_location: str | torch.device = "cpu", calibrated: bool = True
) -> tuple[Classifier, dict]:
    """``model.pt`` -> (model in eval mode, everything else in the file). ``calibrated``: the
    model divides its logits by the file's fitted temperature (1 for files without one)."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ArtclfError(f"{path}: not found; train first (`artclf train … --run RUN`)") from None
    except Exception as e:  # pickled code is refused by weights_only
        raise ArtclfError(f"{path}: not a loadable artclf model ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ArtclfError(f"{path}: not an artclf model file (format {FORMAT} expected)")
    pre = Preprocess.from_dict(blob["preprocess"])
    model = build_model(blob["arch"], None, len(blob["classes"]), pre)
    model.load_state_dict(plain_state_dict(blob["state_dict"]))  # files saved before the strip too
    if calibrated:
        model.temperature.fill_(temperature(blob))
    return model.eval(), blob


def temperature(blob: dict) -> float:
    """The calibration temperature stored in a ``model.pt`` (1.0: not calibrated)."""
    return float(blob.get("calibration", {}).get("temperature", 1.0))


def model_card(path: Path, blob: dict) -> dict:
    """What a person needs to judge a model's answers: what it was trained on, when, how it
    chose itself (val), and its honest test scores from ``artclf evaluate`` when
    ``eval-test/metrics.json`` lies beside it (``None`` when not evaluated)."""
    card = {
        "arch": blob.get("arch"),
        "trained_on": blob.get("trained_on"),
        "created": blob.get("created"),
        "epoch": blob.get("epoch"),
        "val_macro_f1": blob.get("val", {}).get("macro_f1"),
        "temperature": temperature(blob),
        "test": None,
    }
    metrics = path.parent / "eval-test" / "metrics.json"
    if metrics.is_file():
        try:
            m = json.loads(metrics.read_text())
            if m.get("model_created") != blob.get("created"):  # evaluated an earlier model.pt
                print(f"artclf: warning: {metrics} scored an earlier model.pt; rerun evaluate")
                return card
            card["test"] = {
                "split": m["split"],
                "n": m["n"],
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "ece": m["ece"],
                "calibrated": "calibration" in m,
                "open_set_auroc": (m.get("open_set") or {}).get("auroc"),
            }
        except (OSError, ValueError, KeyError) as e:
            print(f"artclf: warning: {metrics}: unreadable ({type(e).__name__}: {e}); no test scores shown")
    return card
