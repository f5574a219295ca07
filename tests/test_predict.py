"""predict: PNG, grayscale, CMYK and EXIF-rotated JPEGs through the CLI, a broken file reported while
the others are predicted; predict's tensor equals evaluate's for the same stored JPEG."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from artclf import predict
from artclf.data import read_info
from artclf.model import load_model
from artclf.predict import load_image
from artclf.transforms import Preprocess, decode, eval_image
from tests.conftest import CLASSES, run_cli
from tests.conftest import TINY_PRE as PRE


def test_predict_folder_json_reports_the_broken_file(images, model_pt):
    res = run_cli(
        "predict", "--model", model_pt, images, "--format", "json", "--top-k", "3", "--batch-size", "2"
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    names = sorted(Path(r["path"]).name for r in out)
    assert names == ["alpha.png", "cmyk.jpg", "exif_rotated.jpg", "gray.jpg", "upright.jpg"]
    assert "broken.jpg: OSError" in res.stderr  # file and cause
    assert "notes.txt" not in res.stderr
    net, blob = load_model(model_pt)
    for r in out:
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["artist"] in blob["classes"] for t in r["top_k"])
        with torch.inference_mode():
            ref = torch.softmax(net(load_image(Path(r["path"]), PRE)[None]), 1)[0]
        assert probs[0] == pytest.approx(float(ref.max()), abs=1e-5)


def test_table_and_csv_and_exit_codes(images, model_pt, tmp_path, capsys):
    assert (
        predict.main(
            ["--model", str(model_pt), str(images / "cmyk.jpg"), str(images / "sub"), "--format", "csv"]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3 * 5 and {r["rank"] for r in rows} == {"1", "2", "3", "4", "5"}
    assert predict.main(["--model", str(model_pt), str(images / "upright.jpg"), "--top-k", "50"]) == 0
    assert capsys.readouterr().out.count("%") == len(CLASSES)  # k capped at the number of classes
    assert (
        predict.main(["--model", str(model_pt), str(images / "broken.jpg"), str(tmp_path / "missing.jpg")])
        == 1
    )
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "missing.jpg: no such file" in err


def test_grayscale_cmyk_png_and_exif_orientation(images):
    upright = load_image(images / "upright.jpg", PRE).float()
    rotated = load_image(images / "exif_rotated.jpg", PRE).float()
    assert (rotated - upright).abs().mean() < 3  # JPEG noise only; unrotated it would be ~100
    assert (load_image(images / "upright.jpg", PRE).float().rot90(1, (1, 2)) - upright).abs().mean() > 50
    gray = load_image(images / "sub" / "gray.jpg", PRE)
    assert gray.shape == (3, 48, 48) and (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()
    for name in ("cmyk.jpg", "sub/alpha.png"):
        x = load_image(images / name, PRE)
        assert x.dtype == torch.uint8 and x.shape == (3, 48, 48)
        assert (x.float() - upright).abs().mean() < 10, name


def test_predict_tensor_equals_evaluate_tensor_on_the_stored_jpeg(shards):
    """Evaluate decodes shard JPEGs with torchvision's decode_jpeg, predict with Pillow (open_rgb).
    Both are libjpeg-turbo and here give identical pixels (measured: 0 difference on all 227
    samples, at 48 and 512 px); builds of the two wheels may pick different IDCT/upsampling
    routines, so one grey level is allowed. Resize and crop are the same code."""
    pre = Preprocess(image_size=48, resize=56)
    info = read_info(str(shards))
    n, worst = 0, 0
    for sample in wds.DataPipeline(
        wds.SimpleShardList(info["splits"]["test"]["urls"]), wds.tarfile_to_samples()
    ):
        evaluated = eval_image(decode(sample["jpg"]), pre).int()
        predicted = load_image(sample["jpg"], pre).int()
        assert evaluated.shape == predicted.shape == (3, 48, 48)
        diff = (evaluated - predicted).abs()
        worst = max(worst, int(diff.max()))
        n += 1
    assert n == info["splits"]["test"]["num_samples"]
    assert worst <= 1
    png = io.BytesIO()
    Image.open(io.BytesIO(sample["jpg"])).save(png, format="PNG")  # lossless: one decoder, exact
    assert torch.equal(eval_image(decode(png.getvalue()), pre), load_image(png.getvalue(), pre))
