"""predict: PNG, grayscale, CMYK and EXIF-rotated JPEGs through the CLI, a broken file reported while
the others are predicted; predict's tensor equals evaluate's for the same stored JPEG."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from artclf import predict
from artclf.data import read_info
from artclf.inference import load_image
from artclf.model import load_model, save_model
from artclf.transforms import Preprocess, decode, eval_image
from tests.conftest import CLASSES, assert_figure, run_cli
from tests.conftest import TINY_PRE as PRE

# artists.csv's names of the test classes, written out
NAMES = ["Albrecht Dürer", "Claude Monet", "Edgar Degas", "Pablo Picasso", "Paul Klee", "Titian"]


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
        assert all(t["class"] in blob["classes"] for t in r["top_k"])
        assert [t["artist"] for t in r["top_k"]] == [NAMES[CLASSES.index(t["class"])] for t in r["top_k"]]
        assert r["known"] and r["answer"] == r["top_k"][0]["artist"] and r["threshold"] is None
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


def with_extra(model_pt: Path, dest: Path, **extra) -> Path:
    """A copy of ``model_pt`` with more keys in its blob (calibration, open_set, artists)."""
    net, blob = load_model(model_pt)
    keep = {
        k: v for k, v in blob.items() if k not in ("format", "arch", "classes", "preprocess", "state_dict")
    }
    save_model(dest, net, blob["classes"], PRE, blob["arch"], {**keep, **extra})
    return dest


def test_unknown_below_the_threshold_with_the_top_k_still_listed(images, model_pt, tmp_path):
    res = run_cli("predict", "--model", model_pt, images, "--format", "json")
    scores = sorted(r["score"] for r in json.loads(res.stdout))
    middle = (scores[1] + scores[2]) / 2  # two below, three above
    model = with_extra(
        model_pt, tmp_path / "model.pt", open_set={"score": "max_probability", "threshold": middle}
    )
    res = run_cli("predict", "--model", model, images, "--format", "json", "--top-k", "2")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for r in out:
        assert r["known"] == (r["score"] >= middle) and r["threshold"] == middle
        assert r["answer"] == (r["top_k"][0]["artist"] if r["known"] else "unknown")
        assert r["class"] == (r["top_k"][0]["class"] if r["known"] else None)
        assert len(r["top_k"]) == 2 and r["score"] == r["top_k"][0]["probability"]
    assert sum(not r["known"] for r in out) == 2
    table = run_cli("predict", "--model", model, images, "--top-k", "2").stdout
    assert table.count(": unknown (score ") == 2


def test_names_from_the_model_file_win_over_the_known_table(images, model_pt, tmp_path):
    """The file's names (artists.csv's, via _info.json) are shown when they fold to its classes;
    names that do not (a file edited by hand) give way to the Kaggle names."""
    bad = with_extra(model_pt, tmp_path / "bad.pt", artists=["Somebody Else", *NAMES[1:]])
    good = with_extra(model_pt, tmp_path / "good.pt", artists=["Albrecht Durer", *NAMES[1:]])
    for model, first in ((bad, NAMES[0]), (good, "Albrecht Durer")):
        res = run_cli("predict", "--model", model, images / "upright.jpg", "--format", "json", "--top-k", "6")
        top = json.loads(res.stdout)[0]["top_k"]
        assert {t["class"]: t["artist"] for t in top}["Albrecht_Durer"] == first


def reference_cam(model, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM of a torchvision ResNet written out: the forward pass by hand up to layer4, its
    output made a leaf, the rest of the network on top, the gradient read off the leaf."""
    net = model.net
    h = model.normalize(x)
    h = net.maxpool(net.relu(net.bn1(net.conv1(h))))
    acts = net.layer4(net.layer3(net.layer2(net.layer1(h)))).detach().requires_grad_()
    logits = net.fc(torch.flatten(net.avgpool(acts), 1)) / model.temperature
    logits[0, cls].backward()
    cam = torch.relu((acts.grad.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).detach()


def test_explain_writes_the_grad_cam_of_the_top_class(images, model_pt, tmp_path):
    from functools import partial

    from artclf.explain import HEAT_MAP_SIDES, grad_cam, heat_map
    from artclf.inference import load_picture

    out = tmp_path / "why"
    res = run_cli("predict", "--model", model_pt, images, "--format", "json", "--explain", out)
    assert res.returncode == 0, res.stderr
    answers = json.loads(res.stdout)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{Path(r['path']).stem}.gradcam.png" for r in answers
    )
    net, _ = load_model(model_pt)
    ref_net, _ = load_model(model_pt)  # the reference's backward fills parameter gradients
    for r in answers:
        png = Path(r["explanation"])
        assert png.parent == out
        x = load_image(Path(r["path"]), PRE)[None]
        cls = CLASSES.index(r["top_k"][0]["class"])
        cam, c = grad_cam(net, x)
        assert c == cls
        torch.testing.assert_close(cam, reference_cam(ref_net, x, cls), atol=1e-5, rtol=1e-4)
        # drawn over the whole picture, as serve draws it, the long side brought up to 512 px
        picture, _ = load_picture(Path(r["path"]), PRE)
        (h, w), drawn = picture.shape[1:], heat_map(partial(grad_cam, net), picture, PRE)[0]
        with Image.open(png) as im:
            assert max(im.size) == HEAT_MAP_SIDES[0] and abs(im.width / im.height / (w / h) - 1) < 0.02
            shown = torch.from_numpy(np.array(im.convert("RGB"))).int()
        assert (shown - torch.from_numpy(np.asarray(drawn)).int()).abs().max() <= 1
    assert not any(p.grad is not None for p in net.parameters())  # no parameter gradient computed


def test_grad_cam_runs_on_a_features_backbone_and_overlay_shows_the_map(images, tmp_path):
    from artclf.explain import grad_cam, overlay
    from artclf.model import build_model

    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none", len(CLASSES), PRE).eval()
    x = load_image(images / "upright.jpg", PRE)[None]
    cam, c = grad_cam(net, x)
    assert cam.shape == (48, 48) and float(cam.min()) >= 0 and float(cam.max()) == pytest.approx(1.0)
    with torch.inference_mode():
        assert c == int(net(x).argmax())
    overlay(x[0], cam).save(tmp_path / "cam.png")
    assert_figure(tmp_path / "cam.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_large_images_decode_at_reduced_size_close_to_the_full_decode(fmt):
    """Uploads and predict inputs decode at reduced size (JPEG by DCT scaling, others by a box
    reduction right after decoding), never below the model's resize, and the model input is
    within a few grey levels of the full-size decode's."""
    from artclf.images import open_rgb
    from artclf.transforms import to_uint8_tensor

    yy, xx = np.mgrid[0:900, 0:1300]
    wave = 128 + 100 * np.sin(xx / 90) * np.cos(yy / 70)
    a = np.stack([xx * 255 // 1300, yy * 255 // 900, wave], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    data = buf.getvalue()
    small = open_rgb(data, min_side=PRE.resize, reduce_others=True)
    # never below the resize; JPEG's DCT scaling stops at 1/8 (900 -> 113), the box reduction does not
    assert PRE.resize <= min(small.size) < (900 / 4 if fmt == "JPEG" else 2 * PRE.resize)
    full = eval_image(to_uint8_tensor(open_rgb(data)), PRE).float()
    assert (load_image(data, PRE).float() - full).abs().mean() < 4
    with pytest.raises(Exception, match="cannot identify"):
        open_rgb(data, formats=["TIFF"])  # a format not listed is not even tried


def test_a_200_mp_phone_jpeg_is_predicted_and_a_big_png_is_refused_naming_the_cap(model_pt, tmp_path):
    """The rule serve applies: a JPEG counts at its reduced decode (its header up to
    --max-declared-pixels); a PNG, decoded in full, at its header against --max-pixels."""
    from tests.support.jpeg import flat_jpeg

    (tmp_path / "phone.jpg").write_bytes(flat_jpeg(20000, 10000))  # over Pillow's 179 MP bomb line
    Image.new("L", (3000, 2000)).save(tmp_path / "scan.png")
    res = run_cli("predict", "--model", model_pt, tmp_path, "--format", "json", "--max-pixels", "5000000")
    assert res.returncode == 0, res.stderr
    assert [Path(r["path"]).name for r in json.loads(res.stdout)] == ["phone.jpg"]
    assert "scan.png: TooManyPixels: PNG of 3000×2000 = 6000000 pixels" in res.stderr
    assert "--max-pixels" in res.stderr


def test_strict_exits_1_when_any_input_was_unreadable(images, model_pt, tmp_path, capsys):
    """In-process (the stage's main, as `artclf predict` calls it): the exit code and the lines."""
    good, broken = images / "upright.jpg", images / "broken.jpg"
    args = ["--model", str(model_pt), str(good), str(broken)]
    assert predict.main(args) == 0 and "upright.jpg" in capsys.readouterr().out  # default: skip, go on
    assert predict.main([*args, str(tmp_path / "gone.jpg"), "--strict"]) == 1
    out, err = capsys.readouterr()
    assert "upright.jpg" in out, err  # the good one still printed
    assert "broken.jpg: OSError" in err and "gone.jpg: no such file" in err
    assert err.strip().splitlines()[-1] == "artclf predict: error: 2 of 3 inputs could not be read (--strict)"
    assert predict.main(["--model", str(model_pt), str(good), "--strict"]) == 0
