"""The training loss: ``ce_weight·CE + f1_weight·SoftF1`` (0.3 / 0.7 as published).

Soft-F1 is macro F1 with soft counts from the softmax, summed over the *global* batch of one
call, i.e. every rank's batch of that forward pass: at 8 images per GPU most classes are absent
from a rank's batch, and a per-rank soft-F1 is mostly that floor (../shared/DESIGN.md,
"Pitfalls"). The counts go through the autograd-aware all-reduce.

With gradient accumulation (``--grad-accum`` A) the trainer calls this once per micro-batch, so
soft-F1 is over one micro-batch of every rank (global batch / A images), not over the optimizer
step's whole batch: the step's gradient is that of the mean over its A micro-batches of
``ce_weight·CE + f1_weight·SoftF1`` (artclf.train.engine.train_one_epoch divides each micro-batch's loss
by A; tests/train/test_recipe.py checks it with 2 real processes). Accumulation does not enlarge the
batch soft-F1 sees.

Distributed semantics of one call (W ranks, equal per-rank batches, DDP averaging gradients by 1/W):

- soft-F1: every rank returns the same value, the loss of the concatenated global batch.
  The all-reduce's backward sums ∂L/∂counts over the W ranks, W identical copies, so the
  gradient w.r.t. rank r's logits is W·∂L_global/∂x_r; DDP's 1/W turns the applied parameter
  gradient into exactly ∂L_global/∂θ. No rescaling is needed, and none must be added.
- CE: each rank returns its local-batch mean; the mean over ranks is the global mean, and
  DDP's 1/W averaging makes the applied gradient that of the global-batch mean CE.

So the gradient DDP applies equals that of the 1-process loss on the concatenated batch
(tests/train/test_losses.py checks it with 2 real processes).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks, differentiable (its backward all-reduces the gradient, see the module doc)."""
    # torch.distributed.nn.functional is deprecated in torch 2.14 in favour of the private
    # _functional_collectives.all_reduce, which is differentiable only since late 2025
    # (pytorch#168140); the old one is differentiable across the whole range we admit (>=2.4).
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_reduce is deprecated")
        return all_reduce(t, op=dist.ReduceOp.SUM)


def _at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 → float32; float64 stays (gradcheck in the tests needs it)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def soft_counts(logits: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Soft TP, FP, FN per class of one batch, float32, shape [3, C].

    ``targets`` holds class indices [N] or per-class target probabilities [N, C].
    """
    p = torch.softmax(_at_least_fp32(logits), dim=1)
    if targets.ndim == 1:  # one-hot by comparison: F.one_hot reads min and max back to the host on CPU
        classes = torch.arange(num_classes, device=targets.device)
        y = (targets.long()[:, None] == classes).to(p.dtype)
    else:
        y = targets.to(p.dtype)
    tp = (p * y).sum(0)
    fp = (p * (1 - y)).sum(0)
    fn = ((1 - p) * y).sum(0)
    return torch.stack([tp, fp, fn])


def soft_f1_loss(
    logits: Tensor,
    targets: Tensor,
    num_classes: int,
    eps: float = 1e-7,
    distributed: bool | None = None,
) -> Tensor:
    """Macro soft-F1 loss, ``1 − mean_c 2TP/(2TP+FP+FN+eps)``, over the global batch of this call
    (the ``logits`` of every rank; under gradient accumulation, one micro-batch of every rank).

    ``distributed``: None sums the counts over ranks when torch.distributed is initialised with
    more than one process; True forces it (every rank must call, in the same order); False keeps
    the local batch. Classes with no positive target in the (global) batch are left out of the
    mean: their F1 is 0 whatever the prediction, and its only gradient pushes their p down, which
    CE already does; counting them would put a floor under the loss that depends on the batch.
    (Published soft-F1 losses differ here; many average over all C classes.) If no class is
    present at all (an empty batch), the loss is 1 with zero gradient.

    Computed in float32 (float64 stays) with autocast off, so fp16/bf16 logits do not round the counts.
    """
    if distributed is None:
        distributed = _world_size() > 1
    with torch.autocast(device_type=logits.device.type, enabled=False):
        counts = soft_counts(logits, targets, num_classes)
        if distributed:
            counts = _all_reduce_sum(counts)
        tp, fp, fn = counts
        f1 = 2 * tp / (2 * tp + fp + fn + eps)
        # TP+FN is the support Σy (exactly 0 for an absent class); after the all-reduce it is the
        # same on every rank, so every rank leaves out the same classes.
        present = (tp + fn) > 0
        return 1 - (f1 * present).sum() / present.sum().clamp(min=1)


def combined_loss(
    logits: Tensor,
    targets: Tensor,
    num_classes: int,
    ce_weight: float = 0.3,
    f1_weight: float = 0.7,
    distributed: bool | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``ce_weight·CE + f1_weight·SoftF1`` and its parts (detached, for logging).

    CE is the mean over the local batch (DDP's gradient averaging makes it the global mean);
    soft-F1 is over the global batch of this call (one micro-batch of every rank under gradient
    accumulation), see :func:`soft_f1_loss` and the module docstring. The
    soft-F1 all-reduce runs even when ``f1_weight`` is 0, so every rank issues the same
    collectives whatever its configuration.
    """
    x = _at_least_fp32(logits)
    ce = F.cross_entropy(x, targets if targets.ndim == 1 else targets.to(x.dtype))
    f1 = soft_f1_loss(logits, targets, num_classes, distributed=distributed)
    loss = ce_weight * ce + f1_weight * f1
    return loss, {"ce": ce.detach(), "soft_f1": f1.detach()}
