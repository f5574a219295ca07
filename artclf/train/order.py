"""Which sample the trainer sees where: a pure function of the seed, the epoch and the flat
sample index, whatever the number of ranks, workers or restarts.

Epoch ``e`` over ``N`` train samples at global batch ``B`` (per optimizer step) has
``steps = N // B`` steps and leaves ``R = N mod B`` samples out. The ones left out rotate:
epoch ``e`` leaves out the ``R`` samples from flat position ``e·R mod N`` on (wrapping), so
in ``⌈N/R⌉`` epochs each sample sits out once at most. The other ``steps·B`` are shuffled by
``numpy.random.default_rng([seed, e])``. Optimizer step ``s`` takes order positions
``[s·B, (s+1)·B)``; its ``grad_accum`` micro-batches cut that into ``m = B / grad_accum``,
and rank ``r`` of ``W`` takes the contiguous ``[r·m/W, (r+1)·m/W)`` of each. A micro-batch
is named by its place in the run, ``g = e·T + t`` with ``T = steps·grad_accum`` per epoch:
that number is all a reader needs to know to produce it, so resuming is arithmetic, not
replay, and the same ``g`` names the same global samples on 1, 2 or 16 ranks.

Crop and flip draw from ``random.Random(aug_seed(seed, e, key))``: a sample is augmented the
same way in the same epoch whoever reads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from artclf.errors import ArtclfError


def aug_seed(seed: int, epoch: int, key: str) -> int:
    """The augmentation seed of sample ``key`` in ``epoch``: 64 bits of sha256, so it does not
    depend on Python's string hashing (which differs between processes)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Optimizer steps of one exact pass at global batch ``batch_size``."""
    if num_samples < batch_size:
        raise ArtclfError(
            f"the train split has {num_samples} samples, fewer than one global batch of {batch_size}: "
            "lower --batch-size"
        )
    return num_samples // batch_size


@dataclass(frozen=True)
class Order:
    """The run's order: ``num_samples`` flat samples, global batch ``batch_size`` per optimizer
    step in ``grad_accum`` micro-batches over ``world`` ranks."""

    num_samples: int
    batch_size: int
    seed: int
    grad_accum: int = 1
    world: int = 1

    def __post_init__(self) -> None:
        if self.batch_size % (self.world * self.grad_accum):
            raise ArtclfError(
                f"global batch {self.batch_size} does not divide by ranks × grad_accum "
                f"= {self.world} × {self.grad_accum}"
            )
        steps_per_epoch(self.num_samples, self.batch_size)

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return self.num_samples // self.batch_size

    @property
    def micro(self) -> int:
        """Micro-batches per epoch (each rank runs this many)."""
        return self.steps * self.grad_accum

    @property
    def per_device(self) -> int:
        return self.batch_size // (self.world * self.grad_accum)

    def left_out(self, epoch: int) -> np.ndarray:
        """Flat positions epoch ``epoch`` does not visit: ``N mod B`` of them, rotating."""
        r = self.num_samples % self.batch_size
        return (epoch * r + np.arange(r, dtype=np.int64)) % self.num_samples

    def epoch(self, epoch: int) -> np.ndarray:
        """The epoch's ``steps·B`` flat positions, in the order they are trained on."""
        keep = np.ones(self.num_samples, dtype=bool)
        keep[self.left_out(epoch)] = False
        visited = np.flatnonzero(keep)
        return visited[np.random.default_rng([self.seed, epoch]).permutation(len(visited))]

    def batch(self, order: np.ndarray, t: int, rank: int) -> np.ndarray:
        """Rank ``rank``'s flat positions in micro-batch ``t`` of an epoch whose order is ``order``."""
        start = t * (self.batch_size // self.grad_accum) + rank * self.per_device
        return order[start : start + self.per_device]

    def locate(self, g: int) -> tuple[int, int]:
        """Micro-batch ``g`` of the run as (epoch, micro-batch in the epoch)."""
        return divmod(g, self.micro)
