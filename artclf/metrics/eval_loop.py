"""Exact evaluation across ranks: every sample of a split scored once, whatever the world size.

Shared by training (each epoch's validation) and ``artclf evaluate`` (the honest test score),
so the number a run chose its model on and the number it reports come from one loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from artclf.errors import ArtclfError
from artclf.metrics.classification import classification_metrics


@torch.inference_mode()
def evaluate(
    acc: Accelerator,
    model,
    batches: Iterable,
    classes: list[str],
    expected: int,
    stop_requested: Callable[[], bool] = lambda: False,
    channels_last: bool = False,
) -> tuple[dict | None, dict | None]:
    """Metrics over every sample of the split exactly once, whatever the number of ranks, and
    the predictions behind them (``keys``, ``labels``, ``logits``, ``probs``; gathered on every
    rank); ``channels_last``: inputs in that memory format, as the model's weights are.
    ``(None, None)`` on every rank when a stop was requested on any rank meanwhile.

    Each rank keeps (key, label, probabilities) of what it read; one ``gather_object`` at the
    end brings them together. The collectives here (buffer broadcast, gather) run on every
    rank unconditionally: ranks hold different counts, and some may hold no sample at all
    (fewer shards than ranks, or all of a rank's samples unreadable).
    """
    model = acc.unwrap_model(model)  # DDP's forward broadcasts buffers: a collective per batch
    _broadcast_buffers(acc, model)
    model.eval()
    keys, labels, logits, failed, lost, stopped = [], [], [], [], 0, False
    for batch in batches:
        failed += batch.failed
        lost += batch.lost
        if stop_requested():
            stopped = True
            break
        if not batch.keys:
            continue
        x = batch.images.to(acc.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with acc.autocast():
            out = model(x)
        logits.append(out.float().cpu().numpy())
        labels.append(batch.labels.numpy())
        keys += batch.keys
    mine = [
        (
            keys,
            np.concatenate(labels) if labels else np.zeros(0, np.int64),
            np.concatenate(logits) if logits else np.zeros((0, len(classes)), np.float32),
            failed,
            lost,
            stopped,
        )
    ]
    parts = gather_object(mine)
    if any(p[5] for p in parts):
        return None, None
    all_keys = [k for p in parts for k in p[0]]
    if len(set(all_keys)) != len(all_keys):
        raise ArtclfError("evaluation saw a sample twice; the shard split across ranks is broken")
    # in key order: every figure computed from them is the same float for any world size
    order = np.argsort(np.array(all_keys, dtype=object), kind="stable") if all_keys else np.zeros(0, int)
    all_keys = [all_keys[i] for i in order]
    y = np.concatenate([p[1] for p in parts])[order]
    z = np.concatenate([p[2] for p in parts])[order]
    p = torch.softmax(torch.from_numpy(z), dim=1).numpy()  # as before: float32 softmax of float32 logits
    unreadable = [k for part in parts for k in part[3]]
    skipped = sum(part[4] for part in parts)
    if len(all_keys) + skipped != expected:
        raise ArtclfError(
            f"evaluation counted {len(all_keys)} samples (+{skipped} unreadable: {unreadable[:3]}), "
            f"_info.json says {expected}"
        )
    metrics = classification_metrics(y, p, classes)
    metrics["skipped_samples"] = skipped  # samples not scored: in history.jsonl as val_skipped_samples
    metrics["unreadable"] = unreadable  # what they were: sample keys, or "URL: cause" of a shard
    return metrics, {"keys": all_keys, "labels": y, "logits": z, "probs": p}


def _broadcast_buffers(acc: Accelerator, model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every rank, as DDP's next forward would have made them
    (in training it broadcasts them before each forward; ranks drift apart in between)."""
    if acc.num_processes == 1:
        return
    for buf in model.buffers():
        torch.distributed.broadcast(buf, src=0)
