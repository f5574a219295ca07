"""The classifier and ``model.pt``: a torchvision backbone behind a normalisation layer.

``model.pt`` holds plain data only (tensors, dicts, lists, strings, numbers), so it loads
with ``torch.load(weights_only=True)``: a file that carries code is refused, not run.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from artclf.atomic import atomic_open
from artclf.errors import ArtclfError
from artclf.transforms import Normalize, Preprocess
from artclf.weights import build, refused

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
    model divides its logits by the file's fitted temperature (1 for files without one).
    Anything else is refused in one line that says what it is and what to pass instead."""
    path = Path(path)
    what = not_a_model_pt(path)
    if what:
        raise ArtclfError(f"{path}: {what}")
    try:
        with warnings.catch_warnings():  # pickle protocol notes: the refusal below says it all
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickled code is refused by weights_only
        why = refused(path, e)
        raise ArtclfError(f"{path}: not a loadable artclf model: {why}; {TAKES_MODEL_PT}") from None
    what = _not_artclf(blob)
    if what:
        raise ArtclfError(f"{path}: {what}")
    pre = Preprocess.from_dict(blob["preprocess"])
    model = build_model(blob["arch"], None, len(blob["classes"]), pre)
    model.load_state_dict(plain_state_dict(blob["state_dict"]))  # files saved before the strip too
    if calibrated:
        model.temperature.fill_(temperature(blob))
    return model.eval(), blob


def not_a_model_pt(path: Path) -> str | None:
    """What ``path`` is when its bytes show it is no ``model.pt`` (a folder, an empty, text, ONNX,
    safetensors, TorchScript or torch.export file), and what to pass instead; ``None``: it may be
    one (torch.load decides). By content, not by name: users rename files."""
    if path.is_dir():
        return _folder(path)
    if not path.exists():
        return "not found; train first (`artclf train … --run RUN` writes RUN/model.pt)"
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return f"an empty file (an interrupted copy?); {TAKES_MODEL_PT}"
    if _is_onnx(head):
        return (
            "an ONNX model (`artclf export --format onnx`): `artclf serve --model FILE` takes it (a .onnx "
            "name or --backend onnx); artclf evaluate, predict and export take the model.pt that "
            "`artclf train` writes (RUN/model.pt)"
        )
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return f"a safetensors file of bare weights (a training checkpoint's?); {TAKES_MODEL_PT}"
    if head.startswith(b"PK\x03\x04"):
        return _archive(path)
    if b"\0" not in head:
        try:
            first = head.decode("utf-8").strip().splitlines()[0][:60]
        except (UnicodeDecodeError, IndexError):
            return None
        return f"a text file (it starts {first!r}), not a model; {TAKES_MODEL_PT}"
    return None


TAKES_MODEL_PT = (
    "artclf evaluate, predict, export and serve's torch backend take the model.pt that `artclf train` "
    "writes (RUN/model.pt)"
)


def _folder(path: Path) -> str:
    """A folder passed as ``--model``: a run folder or one of its checkpoints, or neither."""
    if (path / "model.pt").is_file():
        return f"a run folder; pass its model, {path / 'model.pt'}"
    run = path.parent.parent if path.parent.name == "state" else path
    if any((path / name).exists() for name in ("model.safetensors", "optimizer.bin", "pytorch_model.bin")):
        where = f"{run / 'model.pt'}" if (run / "model.pt").is_file() else "RUN/model.pt of its run"
        return (
            f"a training checkpoint (accelerate state, to resume training), not a model; pass {where}, "
            "written by `artclf train` at the best val epoch"
        )
    if (path / "state").is_dir() or (path / "config.json").is_file():
        return "a run folder without model.pt yet (written after the first evaluated epoch); train on"
    return f"a folder, not a model file; {TAKES_MODEL_PT}"


def _is_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: field 1 (ir_version, a small varint) first, then another of its fields
    (producer_name, producer_version, domain, model_version, doc_string, graph, opset_import)."""
    return (
        len(head) > 3
        and head[0] == 0x08
        and 0 < head[1] < 0x80
        and head[2] in b"\x12\x1a\x22\x28\x32\x3a\x42"
    )


def _archive(path: Path) -> str | None:
    """A zip: torch.export's ``.pt2`` or a TorchScript archive (both hold code), else ``None``
    (``torch.save``'s own format: model.pt or a state dict)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(
        n.endswith(("/archive_format", "/models/model.json")) or "serialized_exported_program" in n
        for n in names
    ):
        return (
            "a torch.export program (.pt2, `artclf export --format exported`) for your own serving code "
            f"(torch.export.load); {TAKES_MODEL_PT}"
        )
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return (
            "a TorchScript archive (`artclf export --format torchscript`, or torch.jit.save) for your own "
            f"serving code (torch.jit.load); {TAKES_MODEL_PT}"
        )
    return None


def _not_artclf(blob: object) -> str | None:
    """What a plain-data file that is no ``model.pt`` of this format holds."""
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return None
    if isinstance(blob, dict) and str(blob.get("format", "")).startswith("artclf-model-"):
        return (
            f"an artclf model of format {blob['format']!r}; this artclf reads {FORMAT!r}: use the artclf "
            "version that wrote it, or train again"
        )
    tensors = blob if isinstance(blob, dict) else {}
    tensors = tensors.get("state_dict", tensors.get("model", tensors)) if isinstance(tensors, dict) else {}
    if isinstance(tensors, dict) and tensors and all(isinstance(v, torch.Tensor) for v in tensors.values()):
        return (
            f"a bare state dict ({len(tensors)} tensors, e.g. {next(iter(tensors))!r}), not a model: artclf "
            "needs the model.pt that `artclf train` writes, which carries the class list and preprocessing "
            "besides the weights"
        )
    return f"not an artclf model file (a {type(blob).__name__}; format {FORMAT!r} expected); {TAKES_MODEL_PT}"


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
