"""model.pt's loader: every ``--model`` that is not a model.pt (an ONNX file, a TorchScript or
torch.export archive, a text file, a bare state dict, a run or checkpoint folder, an empty file,
another format version, pickled code) is named in one line with the stage or file to use,
through ``artclf predict``, ``evaluate`` and ``serve`` as a user runs them; never PyTorch's
advice to load with ``weights_only=False`` (which runs whatever the file holds)."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings

import pytest
import torch
from torch import nn

from artclf import evaluate as evaluate_stage
from artclf import predict as predict_stage
from artclf.model import FORMAT
from artclf.serve import app as serve_stage


class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def kinds(model_pt, tmp_path_factory) -> dict:
    """kind -> (path, words the one-line error must hold); each made by the tool that makes it."""
    d = tmp_path_factory.mktemp("kinds")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():  # the TorchScript-based exporter and torch.jit are deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(d / "model.onnx"), dynamo=False, opset_version=17)
        torch.jit.save(torch.jit.script(net), str(d / "scripted.pt"))
    torch.export.save(torch.export.export(net, (x,)), str(d / "model.pt2"))
    torch.save(net.state_dict(), d / "weights.pt")
    (d / "notes.txt").write_text("my notes on the run\n")
    (d / "empty.pt").touch()
    blob = torch.load(model_pt, weights_only=True)
    torch.save({**blob, "format": "artclf-model-0"}, d / "old.pt")
    (d / "evil.pt").write_bytes(pickle.dumps({"format": FORMAT, "x": Evil()}))
    run = d / "run"
    (run / "state" / "step-7").mkdir(parents=True)
    shutil.copy(model_pt, run / "model.pt")
    (run / "state" / "step-7" / "model.safetensors").write_bytes(b"\0" * 16)
    return {
        "onnx": (d / "model.onnx", ["an ONNX model", "artclf serve"]),
        "torchscript": (d / "scripted.pt", ["a TorchScript archive", "torch.jit.load"]),
        "pt2": (d / "model.pt2", ["a torch.export program", "torch.export.load"]),
        "text": (d / "notes.txt", ["a text file", "my notes on the run"]),
        "state_dict": (d / "weights.pt", ["a bare state dict", "class list and preprocessing"]),
        "empty": (d / "empty.pt", ["an empty file"]),
        "other_format": (d / "old.pt", ["format 'artclf-model-0'", FORMAT]),
        "pickled_code": (d / "evil.pt", ["not a loadable artclf model", "posix.system"]),
        "run_folder": (run, ["a run folder", str(run / "model.pt")]),
        "checkpoint_folder": (run / "state" / "step-7", ["a training checkpoint", str(run / "model.pt")]),
    }


def _stage(name: str, model, images) -> list[str]:
    """``main``'s argv for ``name`` with ``--model model``."""
    if name == "predict":
        return [str(images / "upright.jpg"), "--model", str(model)]
    if name == "evaluate":
        return ["--model", str(model), "--shards", str(images), "--workers", "0"]
    return ["--model", str(model), "--port", "0"]


MAINS = {"predict": predict_stage.main, "evaluate": evaluate_stage.main, "serve": serve_stage.main}
KINDS = ["onnx", "torchscript", "pt2", "text", "state_dict", "empty", "other_format", "pickled_code"]
# serve: an .onnx name is ONNX Runtime's (no error)
CASES = [(s, k) for s in MAINS for k in KINDS + ["run_folder", "checkpoint_folder"]]
CASES = [(s, k) for s, k in CASES if s != "serve" or k != "onnx"]


@pytest.mark.parametrize(("stage", "kind"), CASES)
def test_a_model_that_is_not_a_model_pt_is_named_in_one_line(stage, kind, kinds, images, capsys):
    path, words = kinds[kind]
    assert MAINS[stage](_stage(stage, path, images)) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "weights_only" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert str(path) in lines[0], lines[0]


def test_the_model_pt_it_names_loads(kinds):
    """The folder errors point at a file that is a loadable model.pt."""
    from artclf.model import load_model

    run = kinds["run_folder"][0]
    model, blob = load_model(run / "model.pt")
    assert blob["format"] == FORMAT and not model.training
