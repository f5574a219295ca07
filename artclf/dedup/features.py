"""Per-image features for dedup: perceptual hashes, a small thumbnail, ORB keypoints (of the
image and its mirror image) and CNN embeddings, cached by sha256.

Each image is decoded once (DataLoader workers) into all four. The cache lives in
``WORK/dedup/``: ``hashes.npz`` (hashes, thumbnails, keypoints) and ``embeddings.npy`` with
``embeddings.json`` (the keys and
the model that made them); a rerun computes only what is missing, and a killed run loses at
most one save interval. ``--part i --num-parts n`` writes ``parts/part-i-of-n.npz`` instead,
for a SLURM array or Kubernetes Indexed Job; ``--merge`` folds the parts into the cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from artclf.atomic import atomic_open, write_json
from artclf.dedup import alignment, geometry, phash
from artclf.errors import ArtclfError
from artclf.images import open_rgb
from artclf.transforms import whole_image

SAVE_EVERY = 2048  # images between cache saves: what a killed run can lose


class Features:
    """Hashes, thumbnails, keypoints (and embeddings, when a model is used) for sha256 keys."""

    def __init__(self, model_id: dict | None) -> None:
        self.model_id = model_id
        self.hash: dict[str, np.ndarray] = {}
        self.flip: dict[str, np.ndarray] = {}
        self.thumb: dict[str, np.ndarray] = {}
        self.local: dict[str, geometry.Local] = {}
        self.emb: dict[str, np.ndarray] = {}

    def missing(self, keys: list[str]) -> list[str]:
        need_emb = self.model_id is not None
        return [k for k in keys if k not in self.local or (need_emb and k not in self.emb)]

    def add(
        self,
        keys: list[str],
        h: np.ndarray,
        hf: np.ndarray,
        t: np.ndarray,
        local: list[geometry.Local],
        e: np.ndarray | None,
    ) -> None:
        for i, k in enumerate(keys):
            self.hash[k], self.flip[k], self.thumb[k], self.local[k] = h[i], hf[i], t[i], local[i]
            if e is not None:
                self.emb[k] = e[i]

    def arrays(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(hashes, mirrored hashes, thumbnails, embeddings or None), rows in ``keys`` order."""
        h = np.stack([self.hash[k] for k in keys])
        hf = np.stack([self.flip[k] for k in keys])
        t = np.stack([self.thumb[k] for k in keys])
        e = np.stack([self.emb[k] for k in keys]) if self.model_id is not None else None
        return h, hf, t, e

    # --- the cache in WORK/dedup -------------------------------------------------
    def save(self, folder: Path) -> None:
        keys = sorted(self.hash)
        h, hf, t, _ = self.arrays(keys)
        local = geometry.pack([self.local[k] for k in keys])
        with atomic_open(folder / "hashes.npz", "wb") as f:
            np.savez(
                f, keys=np.array(keys), hash=h.astype(np.int8), flip=hf.astype(np.int8), thumb=t, **local
            )
        if self.model_id is not None:
            ekeys = sorted(self.emb)
            with atomic_open(folder / "embeddings.npy", "wb") as f:
                np.save(f, np.stack([self.emb[k] for k in ekeys]).astype(np.float16))
            write_json(folder / "embeddings.json", {"model": self.model_id, "keys": ekeys})

    @classmethod
    def load(cls, folder: Path, model_id: dict | None) -> Features:
        """The cache, with embeddings only if they were made by the same model."""
        feats = cls(model_id)
        z = np.load(folder / "hashes.npz") if (folder / "hashes.npz").is_file() else {}
        if geometry.current(z):  # a cache without keypoints, or made with other settings, is recomputed
            feats.add(*_unpack(z), None)
        meta = folder / "embeddings.json"
        if model_id is not None and meta.is_file():
            info = json.loads(meta.read_text())
            if info["model"] == model_id:
                emb = np.load(folder / "embeddings.npy").astype(np.float32)
                feats.emb.update(zip(info["keys"], emb, strict=True))
            else:
                print(f"{meta}: made by {info['model']}, not {model_id}; embeddings are recomputed")
        return feats


class _Images(Dataset):
    def __init__(self, paths: list[Path], image_size: int, cnn: bool) -> None:
        self.paths, self.size, self.cnn = paths, image_size, cnn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        im = open_rgb(self.paths[i], min_side=max(self.size, geometry.SIDE))
        h, hf = phash.hash_pair(im)
        x = whole_image(im, self.size) if self.cnn else torch.empty(0)
        return h, hf, alignment.thumbnail(im), geometry.local_features(im), x


def _collate(items: list[tuple]) -> tuple:
    h, hf, t, local, x = zip(*items, strict=True)
    return np.stack(h), np.stack(hf), np.stack(t), list(local), torch.stack(x)


@torch.inference_mode()
def compute(
    feats: Features,
    keys: list[str],
    paths: list[Path],
    model: torch.nn.Module | None,
    image_size: int,
    batch_size: int,
    workers: int,
    save_to: Path | None,
) -> None:
    """Fill ``feats`` for ``keys`` (read from ``paths``), saving every ``SAVE_EVERY`` images."""
    loader = DataLoader(
        _Images(paths, image_size, model is not None),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        collate_fn=_collate,
    )
    done, since_save = 0, 0
    for h, hf, t, local, x in tqdm(loader, desc="features", unit="batch", mininterval=1.0):
        e = None
        if model is not None:
            e = torch.nn.functional.normalize(model(x).flatten(1).float(), dim=1).numpy()
        n = len(h)
        feats.add(keys[done : done + n], h, hf, t, local, e)
        done, since_save = done + n, since_save + n
        if save_to is not None and since_save >= SAVE_EVERY:
            feats.save(save_to)
            since_save = 0


def part_path(folder: Path, part: int, num_parts: int) -> Path:
    return folder / "parts" / f"part-{part:05d}-of-{num_parts:05d}.npz"


def save_part(path: Path, feats: Features, keys: list[str]) -> None:
    h, hf, t, e = feats.arrays(keys)
    extra = {"emb": e.astype(np.float16)} if e is not None else {}
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            keys=np.array(keys),
            hash=h.astype(np.int8),
            flip=hf.astype(np.int8),
            thumb=t,
            model=np.array(json.dumps(feats.model_id)),
            **geometry.pack([feats.local[k] for k in keys]),
            **extra,
        )


def merge_parts(folder: Path, feats: Features) -> int:
    """Fold every ``parts/part-*-of-n.npz`` into ``feats``; error when one is missing."""
    files = sorted((folder / "parts").glob("part-*-of-*.npz"))
    if not files:
        raise ArtclfError(
            f"{folder / 'parts'}: no part files; run `artclf dedup --part i --num-parts n` first"
        )
    counts = {int(re.search(r"-of-(\d+)", f.name).group(1)) for f in files}
    if len(counts) != 1:
        raise ArtclfError(
            f"{folder / 'parts'}: parts of different --num-parts {sorted(counts)}; remove stale ones"
        )
    n = counts.pop()
    have = {int(re.search(r"part-(\d+)", f.name).group(1)) for f in files}
    if have != set(range(n)):
        raise ArtclfError(f"{folder / 'parts'}: missing part(s) {sorted(set(range(n)) - have)} of {n}")
    for f in files:
        z = np.load(f)
        if json.loads(str(z["model"])) != feats.model_id:
            raise ArtclfError(f"{f}: made by {json.loads(str(z['model']))}, this run uses {feats.model_id}")
        if not geometry.current(z):
            raise ArtclfError(
                f"{f}: no keypoints made with {geometry.PARAMS} (a part from an older artclf?); "
                "rerun its `artclf dedup --part i --num-parts n`"
            )
        feats.add(*_unpack(z), z["emb"].astype(np.float32) if "emb" in z else None)
    return n


def _unpack(
    z: Mapping[str, np.ndarray],
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, list[geometry.Local]]:
    """(keys, hashes, mirrored hashes, thumbnails, keypoints) of a cache or part file."""
    h, hf = z["hash"].astype(np.float32), z["flip"].astype(np.float32)
    return list(z["keys"]), h, hf, z["thumb"], geometry.unpack(z)
