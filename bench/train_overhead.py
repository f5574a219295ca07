r"""Overhead of artclf's training loop over a bare PyTorch loop: same model, batches and loss.

    python -m bench.train_overhead [--arch resnet18] [--size 64] [--batch 16] [--steps 30] [--repeats 3]
                                   [--engine PATH]

Both loops run forward, ``0.3·CE + 0.7·soft-F1``, backward and an AdamW step on the same
in-memory uint8 batches. artclf's loop (``engine.train_one_epoch`` under an ``Accelerator``)
adds what a real run needs: the LR schedule, the all-rank stop / non-finite check, timing and
log callbacks, the progress bar. Runs alternate, ``--repeats`` times each, after one warm-up;
the median steps/s of each is compared.

Then the host reads of tensor values per optimizer step of each loop, with the trainer's
default ``--log-every`` and ``--check-every``: ``item()``, ``float()``, ``bool()`` (all go
through ``aten._local_scalar_dense``) and ``tolist()``. On a GPU each one waits for the
device to finish everything queued so far. ``--engine PATH`` takes ``train_one_epoch`` from
another ``engine.py`` (e.g. ``git show REV:artclf/train/engine.py > old.py``) to count a former loop.
One from before the stages moved into packages lies at ``REV:artclf/engine.py`` and imports
``artclf.losses`` and ``artclf.metrics``: first ``sed -i -e 's/artclf\.losses/artclf.train.losses/'
-e 's/artclf\.metrics import/artclf.metrics.classification import/' old.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode

from artclf.data import Batch
from artclf.model import build_model
from artclf.train import TrainConfig
from artclf.train.checkpoint import TrainState
from artclf.train.engine import lr_at, train_one_epoch
from artclf.train.losses import combined_loss
from artclf.train.recipe import make_optimizer
from artclf.transforms import Preprocess

CLASSES = 50


def batches(n: int, batch: int, size: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    return [
        Batch(
            torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, CLASSES, (batch,), generator=g),
            [f"k{i}_{j}" for j in range(batch)],
        )
        for i in range(n)
    ]


def bare(model, opt, data: list[Batch]) -> float:
    model.train()
    t = time.perf_counter()
    for b in data:
        loss, _ = combined_loss(model(b.images), b.labels, CLASSES)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return len(data) / (time.perf_counter() - t)


def default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


def run_loop(acc, model, opt, batches: Iterable[Batch], steps: int, loop=train_one_epoch, **settings) -> None:
    """``steps`` optimizer steps of ``loop`` (artclf's ``train_one_epoch``; ``--engine``: a former
    one) over in-memory batches, with the trainer's defaults; ``settings`` override them."""
    kwargs = dict(
        num_classes=CLASSES,
        ce_weight=0.3,
        f1_weight=0.7,
        grad_accum=1,
        clip_grad=default("clip_grad"),
        lr_of_step=lambda s: lr_at(s, 10_000, 100, 3e-4),
        state=TrainState(),
        stop_requested=lambda: False,
        on_log=lambda row: None,
        on_save=lambda: None,
        save_every=0,
        log_every=default("log_every"),
        check_every=default("check_every"),
        total_steps=steps,
    )
    kwargs.update(settings)
    accepted = inspect.signature(loop).parameters  # an older loop may not take every argument
    loop(acc, model, opt, batches, **{k: v for k, v in kwargs.items() if k in accepted})


def ours(acc, model, opt, data: list[Batch], loop=train_one_epoch) -> float:
    t = time.perf_counter()
    run_loop(acc, model, opt, data, len(data), loop, clip_grad=0.0)  # the bare loop does not clip
    return len(data) / (time.perf_counter() - t)


_TORCH = os.path.dirname(torch.__file__) + os.sep
# frames between a read and the counter: this file, the dispatch mode's wrappers, Tensor methods
_MACHINERY = (
    __file__,
    os.path.join(_TORCH, "utils", "_python_dispatch.py"),
    os.path.join(_TORCH, "_tensor.py"),
    os.path.join(_TORCH, "_compile.py"),
    os.path.join(_TORCH, "_dynamo", ""),
)


def _by_loop_code() -> bool:
    """Whether the read was made by the loop's own code, not inside PyTorch: AdamW reads its
    step counters, host tensors by design (no device wait on a GPU either)."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_MACHINERY):
        f = f.f_back
    return f is not None and not f.f_code.co_filename.startswith(_TORCH)


class _ScalarReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and _by_loop_code():
            self.n += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def host_reads():
    """Counts the loop code's host reads of tensor values inside the block: ``item``/``float``/
    ``bool`` (dispatched) and ``tolist`` (not dispatched: counted by a wrapper); reads inside
    PyTorch itself are not counted. Yields a callable that returns the count."""
    original, lists = torch.Tensor.tolist, [0]

    def tolist(self):
        lists[0] += _by_loop_code()
        return original(self)

    torch.Tensor.tolist = tolist
    try:
        with _ScalarReads() as scalars:
            yield lambda: scalars.n + lists[0]
    finally:
        torch.Tensor.tolist = original


def load_loop(path: str | None):
    if path is None:
        return train_one_epoch
    spec = importlib.util.spec_from_file_location("engine_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_one_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", help="engine.py to take train_one_epoch from (default: this checkout's)")
    a = ap.parse_args()
    loop = load_loop(a.engine)
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {a.arch} at {a.size} px, batch {a.batch}"
        f", {a.steps} steps per run"
    )
    data = batches(a.steps, a.batch, a.size)
    torch.manual_seed(0)
    plain = build_model(a.arch, None, CLASSES, Preprocess(image_size=a.size))
    plain_opt = make_optimizer(plain, 3e-4, 0.05)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    net = build_model(a.arch, None, CLASSES, Preprocess(image_size=a.size))
    model_opt = acc.prepare(net, make_optimizer(net, 3e-4, 0.05))
    bare(plain, plain_opt, data[:3])  # warm-up both
    ours(acc, *model_opt, data[:3], loop=loop)
    b_rates, o_rates = [], []
    for _ in range(a.repeats):
        b_rates.append(bare(plain, plain_opt, data))
        o_rates.append(ours(acc, *model_opt, data, loop=loop))
    b, o = statistics.median(b_rates), statistics.median(o_rates)
    print(f"bare PyTorch loop   {b:7.3f} steps/s  (runs: {', '.join(f'{r:.3f}' for r in b_rates)})")
    print(f"artclf train loop   {o:7.3f} steps/s  (runs: {', '.join(f'{r:.3f}' for r in o_rates)})")
    print(f"overhead: {100 * (b / o - 1):+.1f} %  (artclf time per step / bare time per step - 1)")
    with host_reads() as count:
        bare(plain, plain_opt, data)
    bare_reads = count()
    with host_reads() as count:
        ours(acc, *model_opt, data, loop=loop)
    our_reads = count()
    print(
        f"host reads of tensor values per optimizer step ({a.steps} steps, --log-every "
        f"{default('log_every')}, --check-every {default('check_every')}): bare {bare_reads / a.steps:.2f}, "
        f"artclf {our_reads / a.steps:.2f} ({our_reads} in all; "
        f"engine {a.engine or 'artclf/train/engine.py'})"
    )


if __name__ == "__main__":
    main()
