"""The input pipeline with 2 real ranks × 2 workers (gloo on CPU): equal train batch counts per
rank, a persistent train stream sliced into epochs, every eval key exactly once; and the
transforms against torchvision's reference."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from artclf.transforms import (
    Normalize,
    Preprocess,
    decode,
    eval_image,
    normalize,
    to_uint8_tensor,
    train_image,
)
from tests.shard.test_shard import expected
from tests.support.cpu_launch import accelerate_cpu


@pytest.mark.slow
def test_two_ranks_two_workers(work, shards, tmp_path):
    out = tmp_path / "ranks.json"
    res = accelerate_cpu(2, "tests/support/launched/dist_data.py", str(shards), str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    info = json.loads((shards / "_info.json").read_text())
    steps = info["splits"]["train"]["num_samples"] // (2 * 4)  # one pass in expectation, 2 ranks x 4
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == [4] * steps
    keys = ranks[0]["val_keys"] + ranks[1]["val_keys"]
    assert sorted(keys) == sorted(expected(work)["val"])  # each exactly once
    # one persistent stream, 3 epochs sliced off it: the same steps on every rank, and the
    # stream goes on across epochs (a fresh stream's first 3 epochs), it does not start over
    for r in ranks:
        epochs = r["stream_epochs"]
        assert [len(e) for e in epochs] == [steps] * 3
        assert all(len(b) == 4 for e in epochs for b in e)
        assert [b for e in epochs for b in e] == r["fresh_stream"]
        assert epochs[1] != epochs[0] and epochs[2] != epochs[0]
    assert ranks[0]["stream_epochs"] != ranks[1]["stream_epochs"]  # each rank its own draw


def square_picture(size: int = 90) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_flip_only_for_chosen_classes():
    im = square_picture()
    pre = Preprocess(image_size=90, resize=90)
    full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop is the whole picture
    plain = np.asarray(im).transpose(2, 0, 1)
    rng = random.Random(0)
    x = to_uint8_tensor(im)
    never = [train_image(x, pre, False, rng, **full).numpy() for _ in range(20)]
    assert all((x == plain).all() for x in never)
    some = [train_image(x, pre, True, rng, **full).numpy() for _ in range(20)]
    mirrored = sum((x == plain[:, :, ::-1]).all() for x in some)
    assert 3 <= mirrored <= 17 and mirrored + sum((x == plain).all() for x in some) == 20


def test_eval_image_matches_pillow_resize_centercrop():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).resize((200, 300))  # smooth-ish
    pre = Preprocess(image_size=64, resize=72)
    ref = v2.Compose([v2.Resize(72), v2.CenterCrop(64), v2.PILToTensor()])(im)  # Pillow's resampling
    ours = eval_image(to_uint8_tensor(im), pre)
    assert ours.shape == ref.shape == (3, 64, 64) and ours.dtype == torch.uint8
    assert (ours.float() - ref.float()).abs().mean() < 4  # resampling details differ, geometry must not


def test_normalize_layer_equals_torchvision_normalize():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = v2.Normalize(pre := Preprocess().mean, Preprocess().std)(x.float() / 255)
    assert pre == (0.485, 0.456, 0.406)
    torch.testing.assert_close(Normalize()(x), ref, atol=1e-5, rtol=1e-5)
    im = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    torch.testing.assert_close(normalize(im), ref[0], atol=1e-5, rtol=1e-5)


def test_decode_matches_pillow_for_jpeg_and_handles_other_formats(tmp_path):
    import io

    im = square_picture(64)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    ref = to_uint8_tensor(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert (decode(buf.getvalue()).int() - ref.int()).abs().max() <= 2  # libjpeg-turbo, two IDCT paths
    png = io.BytesIO()
    im.convert("L").save(png, "PNG")
    gray = decode(png.getvalue())
    assert gray.shape == (3, 64, 64) and (gray[0] == gray[1]).all()


def jpeg_bytes(seed: int, size: tuple[int, int]) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize(size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_device_decode_path_equals_the_workers_path_on_cpu():
    """The --gpu-decode code path, run with device "cpu": the same crops and flips as the
    workers' decode + train_image with the same random stream; a broken JPEG is dropped and
    named, the rest unchanged."""
    from artclf.transforms import train_batch_on_device

    pre = Preprocess(image_size=48, resize=56)
    blobs = [jpeg_bytes(i, (90 + 7 * i, 70 + 5 * i)) for i in range(5)]
    blobs[3] = blobs[3][:200]  # truncated: no image in it
    labels, flip = [0, 1, 2, 1, 0], frozenset({1})
    want, rng = [], random.Random(42)
    for i, b in enumerate(blobs):
        if i != 3:
            want.append(train_image(decode(b), pre, labels[i] in flip, rng))
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    got, failed = train_batch_on_device(tensors, labels, pre, flip, random.Random(42), "cpu")
    assert failed == [3]
    assert got.shape == (4, 3, 48, 48) and got.dtype == torch.uint8
    assert torch.equal(got, torch.stack(want))


def test_encoded_train_stream_decoded_on_the_device_keeps_keys_and_labels(shards):
    """train_stream(encoded=True) + decode_on_device ("cpu" here) yields the same samples, in the
    same order, as the workers' decode path, as uint8 image batches of the right size."""
    from itertools import islice

    from artclf.data import decode_on_device, read_info, train_stream

    info, pre = read_info(str(shards)), Preprocess(image_size=48, resize=56)
    plain = list(islice(iter(train_stream(info, pre, 4, 0, 0, 1, seed=3)), 6))
    encoded = list(islice(iter(train_stream(info, pre, 4, 0, 0, 1, seed=3, encoded=True)), 6))
    assert all(isinstance(b.images, list) and all(x.ndim == 1 for x in b.images) for b in encoded)
    on_device = list(decode_on_device(iter(encoded), pre, frozenset(), 3, torch.device("cpu")))
    assert [b.keys for b in on_device] == [b.keys for b in plain]
    assert [b.labels.tolist() for b in on_device] == [b.labels.tolist() for b in plain]
    assert all(b.images.shape == (4, 3, 48, 48) and b.images.dtype == torch.uint8 for b in on_device)
