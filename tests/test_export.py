"""export: ONNX (run by onnxruntime), torch.export (.pt2) and TorchScript agree with PyTorch on
sample images, keep a dynamic batch axis and uint8 input, carry the class list; a failed parity
check writes nothing; TorchScript is marked deprecated."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from artclf import export
from artclf.inference import load_image
from artclf.model import load_model
from tests.conftest import CLASSES, run_cli
from tests.conftest import TINY_PRE as PRE


def parity_figure(stdout: str) -> float:
    return float(re.search(r"max \|Δ probability\| = (\S+)", stdout).group(1))


def test_onnx_parity_dynamic_batch_and_metadata(model_pt, images, tmp_path):
    import onnx  # the dev extra installs both: a missing one is a failure, never a skip
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    res = run_cli("export", "--model", model_pt, "--format", "onnx", "--out", out, "--images", images)
    assert res.returncode == 0, res.stderr[-3000:]
    assert parity_figure(res.stdout) <= 1e-3
    print(res.stdout)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["artclf"])["classes"] == CLASSES
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    model, _ = load_model(model_pt)
    x = torch.stack([load_image(images / n, PRE) for n in ("upright.jpg", "cmyk.jpg", "exif_rotated.jpg")])
    got = session.run(None, {"image": x.numpy()})[0]  # batch 3: not a size seen at export
    with torch.inference_mode():
        ref = torch.softmax(model(x), 1).numpy()
    assert np.abs(torch.softmax(torch.from_numpy(got), 1).numpy() - ref).max() < 1e-4


def test_exported_program_parity_dynamic_batch_and_plain_reload(model_pt, images, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    argv = ["--model", str(model_pt), "--format", "exported", "--out", str(out), "--images", str(images)]
    assert export.main(argv) == 0
    diff = parity_figure(capsys.readouterr().out)
    print(f"exported: export's own parity figure {diff:.3g}")
    assert diff <= 1e-3
    extra = {"artclf.json": ""}
    program = torch.export.load(out, extra_files=extra)  # plain torch, none of artclf's loading code
    meta = json.loads(extra["artclf.json"])
    assert meta["classes"] == CLASSES and meta["preprocess"]["image_size"] == PRE.image_size
    (image,) = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.name == image)
    batch = node.meta["val"].shape[0]
    assert isinstance(batch, torch.SymInt) and node.meta["val"].dtype == torch.uint8  # dynamic N
    net = program.module()
    model, _ = load_model(model_pt)  # the eager reference, run here on the same inputs
    names = ("upright.jpg", "cmyk.jpg", "exif_rotated.jpg", "sub/gray.jpg", "sub/alpha.png")
    x = torch.stack([load_image(images / n, PRE) for n in names])
    with torch.inference_mode():
        for n in (5, 3, 1):  # the example was batch 2: none of these sizes was traced
            got, ref = torch.softmax(net(x[:n]), 1), torch.softmax(model(x[:n]), 1)
            print(f"exported: batch {n}: max |Δ probability| = {(got - ref).abs().max():.3g}")
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_exported_needs_a_pt2_name(model_pt, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse's usage error, before any work
        export.main(["--model", str(model_pt), "--format", "exported", "--out", str(tmp_path / "m.ep")])
    assert "should end in .pt2" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_marks_torchscript_deprecated(capsys):
    with pytest.raises(SystemExit) as e:
        export.main(["--help"])
    assert e.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "torchscript (deprecated: torch.jit is deprecated by PyTorch; use exported)" in help_text


def test_torchscript_parity_and_extra_file(model_pt, tmp_path, capsys):
    out = tmp_path / "model.ts"
    assert export.main(["--model", str(model_pt), "--format", "torchscript", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert parity_figure(captured.out) <= 1e-3
    assert "torchscript is deprecated" in captured.err and "use --format exported" in captured.err
    extra = {"artclf.json": ""}
    with pytest.warns(
        FutureWarning, match=r"`torch\.jit\.load` is deprecated\. Please switch to `torch\.export`"
    ):
        loaded = torch.jit.load(str(out), _extra_files=extra)  # quoted in export.py and README
    assert json.loads(extra["artclf.json"])["preprocess"]["image_size"] == PRE.image_size
    x = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)
    model, _ = load_model(model_pt)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)


def test_parity_failure_exits_1_and_writes_nothing(model_pt, tmp_path, monkeypatch, capsys):
    real = export.torchscript_runner
    monkeypatch.setattr(export, "torchscript_runner", lambda p: lambda x: real(p)(x) + torch.arange(6.0))
    out = tmp_path / "model.ts"
    assert export.main(["--model", str(model_pt), "--format", "torchscript", "--out", str(out)]) == 1
    assert parity_figure(capsys.readouterr().out) > 1e-3
    assert list(tmp_path.iterdir()) == []


def test_onnx_carries_calibration_names_threshold_and_card(model_pt, images, tmp_path):
    """A calibrated model.pt (T = 2.5) exports a graph whose logits are the uncalibrated ones
    / 2.5, with the names, threshold and card (evaluate's scores beside the model) inside."""
    import onnx
    import onnxruntime as ort

    from artclf.model import save_model

    net, blob = load_model(model_pt)
    run = tmp_path / "run"
    (run / "eval-test").mkdir(parents=True)
    names = ["Albrecht Dürer", "Claude Monet", "Edgar Degas", "Pablo Picasso", "Paul Klee", "Titian"]
    extra = {"calibration": {"temperature": 2.5}, "artists": names, "epoch": 3,
             "open_set": {"score": "max_probability", "threshold": 0.3}}  # fmt: skip
    save_model(run / "model.pt", net, blob["classes"], PRE, blob["arch"], extra)
    metrics = {"split": "test", "n": 10, "accuracy": 0.7, "macro_f1": 0.6, "ece": 0.04, "calibration": {}}
    (run / "eval-test" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "model.onnx"
    res = run_cli("export", "--model", run / "model.pt", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["artclf"])
    assert meta["artists"] == names and meta["open_set"]["threshold"] == 0.3
    assert meta["card"]["temperature"] == 2.5 and meta["card"]["epoch"] == 3
    assert meta["card"]["test"]["macro_f1"] == 0.6 and meta["card"]["test"]["calibrated"] is True
    raw, _ = load_model(model_pt)  # the same weights, T = 1
    x = load_image(images / "upright.jpg", PRE)[None]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[
        0
    ]
    with torch.inference_mode():
        np.testing.assert_allclose(got, (raw(x) / 2.5).numpy(), atol=1e-5)


def test_model_card_ignores_scores_of_an_earlier_model(model_pt, tmp_path, capsys):
    from artclf.model import model_card, save_model

    net, blob = load_model(model_pt)
    (tmp_path / "eval-test").mkdir()
    save_model(
        tmp_path / "model.pt",
        net,
        blob["classes"],
        PRE,
        blob["arch"],
        {"created": "2026-11-30T10:00:00+00:00"},
    )
    _, blob = load_model(tmp_path / "model.pt")
    scores = {"split": "test", "n": 9, "accuracy": 0.7, "macro_f1": 0.6, "ece": 0.04}
    for created, shown in (("2026-11-29T10:00:00+00:00", False), ("2026-11-30T10:00:00+00:00", True)):
        (tmp_path / "eval-test" / "metrics.json").write_text(json.dumps({**scores, "model_created": created}))
        card = model_card(tmp_path / "model.pt", blob)
        assert (card["test"] is not None) == shown
        assert ("scored an earlier model.pt" in capsys.readouterr().out) != shown
