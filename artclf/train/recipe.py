"""The recipe's choices the trainer makes from its flags and the data: which classes are flipped,
the optimizer and its parameter groups, and whether BatchNorm becomes SyncBatchNorm."""

from __future__ import annotations

import torch

from artclf.config import strings
from artclf.errors import ArtclfError

# BatchNorm statistics degrade below about 16 images per device (Wu & He, Group Normalization,
# 2018, fig. 1; the torchvision recipes' batch per GPU is 32): SyncBN on below this by default.
SYNC_BN_BELOW = 16


def flip_set(spec: str, classes: list[str], counts: list[int]) -> frozenset[int]:
    """Class indices to flip: ``small`` = fewer train images than the median class."""
    if spec == "none":
        return frozenset()
    if spec == "all":
        return frozenset(range(len(classes)))
    if spec == "small":
        median = sorted(counts)[len(counts) // 2]
        return frozenset(i for i, c in enumerate(counts) if c < median)
    unknown = [n for n in strings(spec) if n not in classes]
    if unknown:
        raise ArtclfError(f"--flip-classes: unknown class(es) {unknown}; names are {classes[:3]}…")
    return frozenset(classes.index(n) for n in strings(spec))


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices and kernels only. ``fused``: one kernel for the whole
    update (CUDA), instead of a few per parameter group."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]  # norms, biases
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        fused=fused or None,
    )


def sync_bn_choice(choice: str, per_device: int, world: int, device: str) -> tuple[bool, str]:
    """Whether to convert BatchNorm to SyncBatchNorm, and why (printed at start)."""
    if world == 1:
        return False, "one process"
    if choice == "off":
        return False, "--sync-bn off"
    if device != "cuda":
        if choice == "on":
            raise ArtclfError(f"--sync-bn on: SyncBatchNorm runs on GPUs only, these processes use {device}")
        return False, f"{device} processes (SyncBatchNorm runs on GPUs only)"
    if choice == "on":
        return True, "--sync-bn on"
    if per_device < SYNC_BN_BELOW:
        return True, f"{per_device} images per device < {SYNC_BN_BELOW} (--sync-bn off to opt out)"
    return False, f"{per_device} images per device >= {SYNC_BN_BELOW}"
