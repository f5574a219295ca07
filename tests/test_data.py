"""The input pipeline with 2 real ranks × 2 workers (gloo on CPU): a persistent train stream
sliced into epochs gives the global batches one process gets, every eval key exactly once; and
the transforms against torchvision's reference."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from artclf.data import read_info, train_index
from artclf.train.order import Order
from artclf.train.stream import train_loader
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
    keys = ranks[0]["val_keys"] + ranks[1]["val_keys"]
    assert sorted(keys) == sorted(expected(work)["val"])  # each exactly once
    # one persistent stream per rank, 3 epochs sliced off it: every global batch (rank 0's
    # half, then rank 1's) is what one process reading the whole order gets
    info = read_info(str(shards))
    one = Order(info["splits"]["train"]["num_samples"], 8, seed=7)
    index = train_index(info, str(shards))
    pre = Preprocess(image_size=48, resize=56)
    for epoch in range(3):
        alone = [b.keys for b in train_loader(index, one, epoch, 0, pre, 0)]
        ranks_epoch = [r["stream_epochs"][epoch] for r in ranks]
        assert [len(e) for e in ranks_epoch] == [one.steps] * 2 and all(len(b) == 4 for b in ranks_epoch[0])
        assert [a + b for a, b in zip(*ranks_epoch, strict=True)] == alone
    train_keys = [k for e in ranks[0]["stream_epochs"] + ranks[1]["stream_epochs"] for b in e for k in b]
    assert set(train_keys) == set(expected(work)["train"])  # 3 epochs: nothing always left out


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
    workers' decode + train_image with the same random generators; a broken JPEG is dropped and
    named, the rest unchanged."""
    from artclf.transforms import train_batch_on_device

    pre = Preprocess(image_size=48, resize=56)
    blobs = [jpeg_bytes(i, (90 + 7 * i, 70 + 5 * i)) for i in range(5)]
    blobs[3] = blobs[3][:200]  # truncated: no image in it
    labels, flip = [0, 1, 2, 1, 0], frozenset({1})
    good = [i for i in range(len(blobs)) if i != 3]
    want = [train_image(decode(blobs[i]), pre, labels[i] in flip, random.Random(42)) for i in good]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    rngs = [random.Random(42) for _ in blobs]
    got, failed = train_batch_on_device(tensors, labels, pre, flip, rngs, "cpu")
    assert failed == [3]
    assert got.shape == (4, 3, 48, 48) and got.dtype == torch.uint8
    assert torch.equal(got, torch.stack(want))


@pytest.mark.parametrize("workers", [0, 1])
def test_starting_a_loader_leaves_the_global_rng_alone(shards, workers):
    """A DataLoader draws its workers' base seed at each iteration; from torch's global RNG that
    draw shifts the trainer's dropout stream by how often loaders were started in the process,
    which differs between a run and its resume (an uninterrupted run starts its persistent val
    loader once, a resumed one again)."""
    from artclf.data import eval_loader
    from artclf.transforms import Preprocess

    info = read_info(str(shards))
    loader = eval_loader(info, "val", Preprocess(image_size=32, resize=32), 8, workers, 0, 1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert next(iter(loader)).keys
    assert torch.equal(torch.get_rng_state(), before)
