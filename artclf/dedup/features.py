"""Per-image features for dedup: perceptual hashes, a small thumbnail, ORB keypoints (of the
image and its mirror image) and CNN embeddings, keyed by sha256.

Each image is decoded once (DataLoader workers) into all four, and written to the feature store
(``artclf.dedup.store``: append-only chunks in ``WORK/dedup/features/``) as it goes; a rerun,
or a requeued ``--part i --num-parts n``, computes only the images no chunk holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from artclf.dedup import alignment, geometry, phash, store
from artclf.images import open_rgb
from artclf.transforms import whole_image


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
    writer: store.Writer,
    keys: list[str],
    paths: list[Path],
    model: torch.nn.Module | None,
    image_size: int,
    batch_size: int,
    workers: int,
) -> None:
    """Compute the features of ``keys`` (read from ``paths``) into ``writer``'s chunks."""
    loader = DataLoader(
        _Images(paths, image_size, model is not None),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        collate_fn=_collate,
    )
    done = 0
    for h, hf, t, local, x in tqdm(loader, desc="features", unit="batch", mininterval=1.0):
        e = None
        if model is not None:
            e = torch.nn.functional.normalize(model(x).flatten(1).float(), dim=1).numpy()
        writer.add(keys[done : done + len(h)], h, hf, t, local, e)
        done += len(h)
    writer.close()
