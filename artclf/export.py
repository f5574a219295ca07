"""``artclf export --model RUN/model.pt --format onnx|exported|torchscript --out FILE``: a model for serving.

The exported graph is the whole :class:`artclf.model.Classifier`: uint8 N×3×S×S images in
(normalisation inside, as in training), logits out, batch axis dynamic. The class list and the
Preprocess travel inside the file (ONNX ``metadata_props``; the extra file ``artclf.json`` of a
``.pt2`` archive or a TorchScript file), with the artists' names, the open-set threshold and the
model card (what it was trained on, its test scores when ``eval-test/metrics.json`` lies beside
``model.pt``), so a server needs nothing else. The graph is the calibrated model: its logits
are divided by the temperature stored in ``model.pt``.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``, opset 17): the dynamo exporter
needs ``onnxscript``, which artclf does not install. Before the file appears under its name it
passes a parity check: softmax probabilities of the exported model against PyTorch on sample
images (``--images``, else seeded random pictures), at two batch sizes; the max absolute
difference is printed and above ``--tolerance`` the export fails (exit 1, no file).

``exported`` is ``torch.export.export`` saved by ``torch.export.save``: a ``.pt2`` file that
plain ``torch.export.load`` reads (it unpickles, per its docs, unlike ``model.pt``: load only
files you trust). ``torchscript`` stays while torch ships it, but PyTorch deprecates
``torch.jit`` (torch 2.14: "`torch.jit.load` is deprecated. Please switch to `torch.export`.");
``exported`` is its replacement.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from artclf.artists import display_names
from artclf.config import arg, stage_main
from artclf.errors import ArtclfError
from artclf.inference import find_images, load_image
from artclf.model import load_model, model_card
from artclf.transforms import Preprocess

FORMATS = ("onnx", "exported", "torchscript")
OPSET = 17


@dataclass(frozen=True)
class ExportConfig:
    model: Path = field(metadata=arg("model.pt written by artclf train"))
    out: Path = field(metadata=arg("file to write (e.g. model.onnx, model.pt2, model.ts)"))
    format: str = field(
        default="onnx",
        metadata=arg(
            "onnx, exported (torch.export, a .pt2 file) or torchscript "
            "(deprecated: torch.jit is deprecated by PyTorch; use exported)"
        ),
    )
    images: Path | None = field(
        default=None, metadata=arg("image or folder for the parity check (default: random pictures)")
    )
    samples: int = field(default=8, metadata=arg("images in the parity check"))
    tolerance: float = field(default=1e-3, metadata=arg("max abs difference of probabilities allowed"))

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format == "exported" and self.out.suffix != ".pt2":
            # torch.export.load warns on other names today and means to refuse them
            raise ValueError(f"--format exported writes a .pt2 file; --out {self.out} should end in .pt2")
        if self.samples < 2:
            raise ValueError("--samples must be >= 2 (the check runs two batch sizes)")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(ExportConfig, run, "artclf export", __doc__, argv)


def run(cfg: ExportConfig) -> int:
    model, blob = load_model(cfg.model)
    pre = Preprocess.from_dict(blob["preprocess"])
    meta = json.dumps(
        {
            "classes": blob["classes"],
            "artists": display_names(blob["classes"], blob.get("artists")),
            "preprocess": pre.to_dict(),
            "arch": blob["arch"],
            "open_set": blob.get("open_set"),
            "card": model_card(cfg.model, blob),  # the temperature is in the graph
        },
        ensure_ascii=False,
    )
    x = sample_batch(cfg.images, pre, cfg.samples)
    tmp = cfg.out.with_name(f".{cfg.out.name}.tmp{os.getpid()}")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if cfg.format == "onnx":
            export_onnx(model, x, tmp, meta)
            runner = onnx_runner(tmp)
        elif cfg.format == "exported":
            export_program(model, x, tmp, meta)
            runner = program_runner(tmp)
        else:
            # a note, not warnings.warn: the format still works, and tests export it often
            note = "torchscript is deprecated (torch.jit is deprecated by PyTorch); use --format exported"
            print(f"artclf export: note: {note}", file=sys.stderr)
            export_torchscript(model, x, tmp, meta)
            runner = torchscript_runner(tmp)
        diff = parity(model, runner, x)
        print(
            f"parity on {len(x)} images at batch sizes {len(x)} and 1: "
            f"max |Δ probability| = {diff:.3g} (tolerance {cfg.tolerance:g})"
        )
        if not diff <= cfg.tolerance:  # NaN fails too
            print(f"artclf export: error: parity check failed; {cfg.out} not written", file=sys.stderr)
            return 1
        os.replace(tmp, cfg.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {cfg.out} ({cfg.format}, uint8 input N×3×{pre.image_size}×{pre.image_size}, dynamic N)")
    return 0


def sample_batch(images: Path | None, pre: Preprocess, n: int) -> torch.Tensor:
    """``n`` images through the evaluation transform, or seeded random pictures of the input size."""
    if images is None:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 3, pre.image_size, pre.image_size), dtype=torch.uint8, generator=g)
    xs = []
    for path in find_images([images]):
        try:
            xs.append(load_image(path, pre))
        except Exception as e:  # as in predict: name the file, use the others
            print(f"artclf export: skipped {path}: {type(e).__name__}: {e}", file=sys.stderr)
        if len(xs) == n:
            break
    if len(xs) < 2:
        raise ArtclfError(f"--images {images}: needs at least 2 readable images, found {len(xs)}")
    return torch.stack(xs)


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, meta: str) -> None:
    import onnx

    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated in favour of dynamo
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x[:2],),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"artclf": meta})
    onnx.save(proto, str(path))


def onnx_runner(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ArtclfError(
            "onnxruntime is not installed: pip install -e '.[export]' (in the artclf clone)"
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def export_program(model: torch.nn.Module, x: torch.Tensor, path: Path, meta: str) -> None:
    """``torch.export`` with a dynamic batch axis, saved as a ``.pt2`` archive."""
    # Example batch 2, as the other formats: at batch 1 export specialises the "dynamic" axis
    # to 1 and fails (torch 2.14: "your code specialized it to be a constant (1)"). The program
    # still runs batch 1 (eval-mode BatchNorm has no batch-size guard); parity checks it.
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},))
    with open(path, "wb") as f:  # a file object: torch.export logs a warning for a path not ending .pt2
        torch.export.save(program, f, extra_files={"artclf.json": meta})


def program_runner(path: Path):
    with open(path, "rb") as f:
        program = torch.export.load(f)
    return program.module()


def export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path, meta: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit.* is deprecated")  # torch 2.10+: still works
        traced = torch.jit.trace(model, x[:2])  # no data-dependent control flow in torchvision's CNNs
        torch.jit.save(traced, str(path), _extra_files={"artclf.json": meta})


def torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit.* is deprecated")
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: loaded(x)


def parity(model: torch.nn.Module, runner, x: torch.Tensor) -> float:
    """Max |softmax(exported) − softmax(PyTorch)| over ``x`` at batch size len(x), then 1."""
    with torch.inference_mode():
        ref = torch.softmax(model(x).float(), dim=1).numpy()
        full = torch.softmax(runner(x).float(), dim=1).numpy()
        one = torch.softmax(runner(x[:1]).float(), dim=1).numpy()
    return float(max(np.abs(full - ref).max(), np.abs(one - ref[:1]).max()))


if __name__ == "__main__":
    raise SystemExit(main())
