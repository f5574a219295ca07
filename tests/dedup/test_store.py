"""The feature store: what goes in comes back (hashes, embeddings, thumbnails, real keypoints,
an image without any), chunk by chunk; a chunk without its index, or made by another model or
other keypoint settings, does not count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from artclf.dedup import alignment, geometry, phash, store
from artclf.images import open_rgb

MODEL = {"arch": "mobilenet_v2", "weights": "w.pt", "image_size": 128}


@pytest.fixture(scope="module")
def computed(sample_dir):
    """Features of seven sample images and one flat (keypoint-free) picture, as dedup makes them."""
    paths = sorted((sample_dir / "images/images").rglob("*.jpg"))[:7]
    ims = [open_rgb(p, min_side=geometry.SIDE) for p in paths] + [Image.new("RGB", (64, 48))]
    hashes = [phash.hash_pair(im) for im in ims]
    rng = np.random.default_rng(0)
    e = rng.normal(size=(len(ims), 24)).astype(np.float32)
    return {
        "keys": [f"{i:064x}" for i in range(len(ims))],
        "h": np.stack([h for h, _ in hashes]),
        "hf": np.stack([hf for _, hf in hashes]),
        "thumbs": np.stack([alignment.thumbnail(im) for im in ims]),
        "local": [geometry.local_features(im) for im in ims],
        "e": e / np.linalg.norm(e, axis=1, keepdims=True),
    }


def write(folder, c, prefix="all", model=MODEL, chunk=3, rows=slice(None)):
    w = store.Writer(folder, prefix, model, chunk)
    w.add(c["keys"][rows], c["h"][rows], c["hf"][rows], c["thumbs"][rows], c["local"][rows], c["e"][rows])
    w.close()
    return w


def test_what_goes_in_comes_back(computed, tmp_path):
    c = computed
    assert c["local"][-1].n == 0 and min(x.n for x in c["local"][:-1]) > 100  # real keypoints
    w = write(tmp_path, c)
    assert w.written == 8 and len(list(tmp_path.glob("*.npz"))) == 3  # chunks of 3, 3, 2
    order = [3, 0, 7, 5]  # any order, any subset
    keys = [c["keys"][i] for i in order]
    ix = store.index(tmp_path, MODEL, keys)
    assert ix.missing == [] and len(ix.names) == 3
    h, hf, e = store.search_arrays(ix, with_emb=True)
    np.testing.assert_array_equal(h, c["h"][order])
    np.testing.assert_array_equal(hf, c["hf"][order])
    assert e.dtype == np.float16
    np.testing.assert_allclose(e, c["e"][order], atol=1e-3)
    thumbs, local = store.read_local(tmp_path, ix.names, ix.chunk, ix.offset, ix.counts)
    np.testing.assert_array_equal(thumbs, c["thumbs"][order])
    for i, x in zip(order, local, strict=True):
        for f in ("xy", "desc", "xy_m", "desc_m"):
            np.testing.assert_array_equal(getattr(x, f), getattr(c["local"][i], f))


def test_only_committed_chunks_of_this_model_and_keypoints_count(computed, tmp_path):
    c = computed
    write(tmp_path, c, rows=slice(0, 3))
    (tmp_path / "all-000001.bin").write_bytes(b"killed before its index was written")
    assert store.done(tmp_path, MODEL, set(c["keys"])) == set(c["keys"][:3])
    write(tmp_path, c, prefix="part-00000-of-00002", model={**MODEL, "weights": "other.pt"}, rows=slice(3, 5))
    assert store.done(tmp_path, MODEL, set(c["keys"])) == set(c["keys"][:3])  # another model's
    other = tmp_path / "part-00001-of-00002-000000.npz"
    write(tmp_path, c, prefix="part-00001-of-00002", rows=slice(5, 8))
    z = dict(np.load(other))
    z["kp_params"] = np.array(json.dumps({**geometry.PARAMS, "side": 1024}))
    np.savez(other, **z)
    assert store.done(tmp_path, MODEL, set(c["keys"])) == set(c["keys"][:3])  # other keypoints
    w = write(tmp_path, c, rows=slice(3, 8))  # the rerun writes over the debris
    assert w.seq == 3 and store.index(tmp_path, MODEL, c["keys"]).missing == []
    ix = store.index(tmp_path, MODEL, c["keys"])
    _, local = store.read_local(tmp_path, ix.names, ix.chunk, ix.offset, ix.counts)
    np.testing.assert_array_equal(local[3].desc, c["local"][3].desc)
