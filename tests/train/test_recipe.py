"""The training recipe around the model: the learning-rate schedule, which classes are flipped,
where weight decay goes, gradient accumulation under 2-process DDP (against 1 process, written
out here), the all-rank stop and non-finite checks, the global-batch rule, and bf16 autocast
through `accelerate launch`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from artclf.config import build_parser
from artclf.errors import ArtclfError
from artclf.train import TrainConfig
from artclf.train.engine import lr_at
from artclf.train.recipe import flip_set, make_optimizer
from tests.conftest import history, train_cmd
from tests.support.cpu_launch import launch

# --- learning-rate schedule -------------------------------------------------------------------


def sgdr(step: int, total: int, warmup: int, peak: float, floor_ratio: float) -> float:
    """Linear warm-up reaching ``peak`` on its last step, then SGDR's cosine (Loshchilov & Hutter,
    2017, eq. 5) from ``peak`` down to ``floor_ratio·peak`` at ``total``, flat after it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    lo, t, span = floor_ratio * peak, min(step - warmup, total - warmup), total - warmup
    return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * t / span))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.3 / 10),  # the first step already moves: 1/warmup of the peak
        (4, 0.3 * 5 / 10),
        (9, 0.3),  # last warm-up step reaches the peak
        (10, 0.3),  # cosine starts at the peak
        (55, (0.3 + 0.003) / 2),  # half-way through the cosine: half-way between peak and floor
        (100, 0.003),  # the end: floor = 1% of the peak
        (250, 0.003),  # beyond the end: stays at the floor
    ],
)
def test_lr_at_hand_values(step, expected):
    assert lr_at(step, total=100, warmup=10, peak=0.3) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("total, warmup, floor_ratio", [(100, 10, 0.01), (37, 0, 0.1), (12, 5, 0.0)])
def test_lr_at_equals_the_sgdr_formula_at_every_step(total, warmup, floor_ratio):
    steps = range(total + 5)
    got = [lr_at(s, total, warmup, 2e-3, floor_ratio) for s in steps]
    assert got == pytest.approx([sgdr(s, total, warmup, 2e-3, floor_ratio) for s in steps], rel=1e-12)
    top = max(warmup - 1, 0)
    assert got[top] == pytest.approx(2e-3) and max(got) == pytest.approx(2e-3)
    assert all(a <= b for a, b in zip(got[:top], got[1 : top + 1], strict=True))  # rises
    assert all(a >= b for a, b in zip(got[top:], got[top + 1 :], strict=False))  # then only falls


# --- flipped classes ---------------------------------------------------------------------------

NAMES = ["Albrecht_Durer", "Claude_Monet", "Edgar_Degas", "Pablo_Picasso", "Paul_Klee", "Titian"]


@pytest.mark.parametrize(
    "counts",
    [
        [5, 9, 2, 9, 7, 3],  # even: median (5 + 7) / 2 = 6
        [40, 40, 12, 40, 40, 3],  # ties at the median are not "fewer"
        [8, 8, 8, 8, 8, 8],  # all equal: none is small
        [1, 100, 2, 99, 50, 51],
    ],
)
def test_flip_small_is_fewer_train_images_than_the_median(counts):
    median = statistics.median(counts)
    expected = {i for i, c in enumerate(counts) if c < median}
    assert flip_set("small", NAMES, counts) == expected


def test_flip_small_with_an_odd_number_of_classes():
    counts = [4, 1, 4, 8, 2]  # median 4 is a count itself: only 1 and 2 are below it
    median = statistics.median(counts)
    assert flip_set("small", NAMES[:5], counts) == {i for i, c in enumerate(counts) if c < median} == {1, 4}


def test_flip_all_none_and_names():
    counts = [5, 9, 2, 9, 7, 3]
    assert flip_set("all", NAMES, counts) == set(range(len(NAMES)))
    assert flip_set("none", NAMES, counts) == frozenset()
    assert flip_set(" Titian, Claude_Monet ", NAMES, counts) == {NAMES.index("Titian"), 1}


def test_flip_unknown_name_is_an_error_naming_it():
    with pytest.raises(ArtclfError, match="--flip-classes") as e:
        flip_set("Titian,Vermeer,claude_monet", NAMES, [1] * len(NAMES))
    assert "'Vermeer'" in str(e.value) and "'claude_monet'" in str(e.value)  # names are case-sensitive
    assert "'Titian'" not in str(e.value).split("names are")[0]


# --- where weight decay goes -------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.frozen = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 5)
        self.temperature = torch.nn.Parameter(torch.tensor(1.5))  # a 0-d parameter
        self.frozen.requires_grad_(False)


def test_weight_decay_only_on_matrices_and_kernels_and_never_on_frozen():
    model = Net()
    opt = make_optimizer(model, lr=0.1, weight_decay=0.05)
    name = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: [name[id(p)] for p in g["params"]] for g in opt.param_groups}
    assert isinstance(opt, torch.optim.AdamW) and {g["lr"] for g in opt.param_groups} == {0.1}
    assert sorted(groups) == [0.0, 0.05]
    assert sorted(groups[0.05]) == ["conv.weight", "head.weight"]
    assert sorted(groups[0.0]) == ["bn.bias", "bn.weight", "conv.bias", "head.bias", "temperature"]
    listed = groups[0.0] + groups[0.05]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)  # each trainable parameter exactly once
    assert not {"frozen.weight", "frozen.bias"} & set(listed)

    # What it does: with zero gradients Adam's update is 0, so one step is decoupled decay alone,
    # p ← p·(1 − lr·wd), on the decayed parameters; the others and the frozen ones stay put.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.05) if n in ("conv.weight", "head.weight") else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=n)


# --- gradient accumulation under DDP -----------------------------------------------------------


def soft_f1(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 − macro F1 with soft counts over the classes present in ``y`` (artclf.train.losses' definition)."""
    p = torch.softmax(logits, dim=1)
    t = F.one_hot(y, num_classes).to(p.dtype)
    tp, fp, fn = (p * t).sum(0), (p * (1 - t)).sum(0), ((1 - p) * t).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + 1e-7)
    return 1 - f1[t.sum(0) > 0].mean()


def loss_of(w, b, x, y, inp, num_classes):
    logits = x @ w.T + b
    return inp["ce_weight"] * F.cross_entropy(logits, y) + inp["f1_weight"] * soft_f1(logits, y, num_classes)


def param_grad(fn, w, b) -> list[torch.Tensor]:
    w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
    return list(torch.autograd.grad(fn(w, b), (w, b)))


def step_reference(inp: dict, w, b, micros: range, per: str = "micro") -> list[torch.Tensor]:
    """1 process, no DDP: the gradient of the step's loss. ``micro`` (what the trainer must do):
    mean over its micro-batches m of [ce·CE + f1·SoftF1] on micro-batch m of ALL ranks put
    together. The variants the check must tell apart: ``step`` (soft-F1 over the whole step's
    batch), ``rank`` (each rank's own soft-F1, no all-reduce), ``sum`` (no division by grad_accum)."""
    num_classes, world = inp["weight"].shape[0], inp["x"].shape[1]
    xs, ys = inp["x"][list(micros)], inp["y"][list(micros)]  # [A, W, n, ...]

    def loss(w, b):
        if per == "step":
            return loss_of(w, b, xs.flatten(0, 2), ys.flatten(), inp, num_classes)
        if per == "rank":
            per_rank = [
                loss_of(w, b, xs[m, r], ys[m, r], inp, num_classes)
                for m in range(len(xs))
                for r in range(world)
            ]
            return sum(per_rank) / len(per_rank)
        total = sum(
            loss_of(w, b, xs[m].flatten(0, 1), ys[m].flatten(), inp, num_classes) for m in range(len(xs))
        )
        return total if per == "sum" else total / len(xs)

    return param_grad(loss, w, b)


def local_reference(inp: dict, w, b, micros: range, rank: int) -> list[torch.Tensor]:
    """What rank ``rank`` holds after ``micros`` without any DDP all-reduce: the sum over them of
    (1/A)·∂/∂θ of its loss, i.e. its own CE mean, and the soft-F1 of micro-batch m of all ranks
    with the other ranks' logits held fixed, times W (the counts' all-reduce sums W equal gradients)."""
    num_classes, world, a = inp["weight"].shape[0], inp["x"].shape[1], inp["grad_accum"]

    def one(w, bb, m):
        x, y = inp["x"][m], inp["y"][m]
        logits = [xr @ w.T + bb if r == rank else (xr @ w.T + bb).detach() for r, xr in enumerate(x)]
        ce = F.cross_entropy(logits[rank], y[rank])
        f1 = soft_f1(torch.cat(logits), y.flatten(), num_classes)
        return (inp["ce_weight"] * ce + world * inp["f1_weight"] * f1) / a

    return param_grad(lambda w, bb: sum(one(w, bb, m) for m in micros), w, b)


@pytest.mark.slow
def test_grad_accum_under_ddp_equals_one_process_mean_of_micro_batch_losses(tmp_path):
    """2 ranks × grad_accum 3 × 2 optimizer steps of ``train_one_epoch`` (float64 nn.Linear, SGD,
    no clipping) against the update written out here for 1 process."""
    world, accum, steps, n, d, c = 2, 3, 2, 4, 5, 5
    g = torch.Generator().manual_seed(11)
    inp = dict(
        x=torch.randn(steps * accum, world, n, d, generator=g, dtype=torch.float64),
        # class c-1 is never a target (left out of soft-F1); with 4 images per rank most micro-batches
        # hold a class on one rank only, so per-rank soft-F1 would differ from the all-reduced one
        y=torch.randint(0, c - 1, (steps * accum, world, n), generator=g),
        weight=torch.randn(c, d, generator=g, dtype=torch.float64) * 0.5,
        bias=torch.randn(c, generator=g, dtype=torch.float64) * 0.1,
        ce_weight=0.3,
        f1_weight=0.7,
        grad_accum=accum,
        lr=0.5,
    )
    torch.save(inp, tmp_path / "in.pt")
    code, out = launch(2, "tests/support/launched/dist_accum.py", str(tmp_path / "in.pt"), str(tmp_path))
    assert code == 0, out[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {world}
    assert {r["ddp"] for r in ranks} == {"DistributedDataParallel"}
    assert [(r["steps"], r["preempted"]) for r in ranks] == [(steps, False)] * world

    close = dict(rtol=1e-10, atol=1e-12)
    w, b = inp["weight"], inp["bias"]
    for k in range(steps):
        micros = range(k * accum, (k + 1) * accum)
        ref = step_reference(inp, w, b, micros)
        # the optimizer steps with the 1-process gradient, on every rank (DDP averaged it once)
        for r in ranks:
            for got, want in zip(r["at_step"][k], ref, strict=True):
                torch.testing.assert_close(got, want, **close)
        # inside the step, no all-reduce: each rank holds the sum of its own micro-batches so far
        for m in micros[1:]:
            for rank, r in enumerate(ranks):
                local = local_reference(inp, w, b, range(micros[0], m), rank)
                for got, want in zip(r["before_micro"][m], local, strict=True):
                    torch.testing.assert_close(got, want, **close)
            assert (ranks[0]["before_micro"][m][0] - ranks[1]["before_micro"][m][0]).abs().max() > 1e-3
        if k:  # zero_grad(set_to_none) after the previous step
            assert all(r["before_micro"][micros[0]] == [None, None] for r in ranks)
        # the check has teeth: the other readings of "the loss of a step" give other gradients
        for per in ("step", "rank", "sum"):
            other = step_reference(inp, w, b, micros, per)
            assert max((o - want).abs().max().item() for o, want in zip(other, ref, strict=True)) > 1e-3, per
        w, b = w - inp["lr"] * ref[0], b - inp["lr"] * ref[1]
    for r in ranks:
        torch.testing.assert_close(r["after"][0], w, **close)
        torch.testing.assert_close(r["after"][1], b, **close)


def first_check(after: int, check_every: int, save_every: int, steps: int) -> int:
    """The first optimizer step (1-based) after ``after`` at which the loop checks all ranks, as
    ``--check-every`` documents it: every ``check_every`` steps, every step a save follows, the
    epoch's last step."""
    return next(
        k
        for k in range(after + 1, steps + 1)
        if k % check_every == 0 or (save_every and k % save_every == 0) or k == steps
    )


CHECK_CASES = [  # name, check_every, save_every, stop (rank, after steps), NaN (rank, in step, where)
    ("plain", 4, 3, None, None),
    ("stop-rank1", 4, 0, (1, 5), None),
    ("stop-rank0-every-step", 1, 0, (0, 5), None),
    ("nan-rank0", 4, 0, None, (0, 6, "input")),
    ("nan-rank1-before-save", 4, 3, None, (1, 5, "input")),
    # the loss stays finite: a NaN enters the gradient (an overflow in the backward pass)
    ("nan-grad-rank1-before-save", 4, 3, None, (1, 5, "grad")),
    ("nan-grad-rank0-every-step", 1, 1, None, (0, 7, "grad")),
]


@pytest.mark.slow
def test_stop_and_non_finite_checks_end_every_rank_within_check_every_steps(tmp_path):
    """2 ranks, 12 steps of ``train_one_epoch``: a stop asked on one rank ends both at the same
    step, at most ``check_every`` steps later; a NaN on one rank, in its input (a NaN loss) or in
    its gradient with a finite loss, raises on both, naming the step (and the parameter), before
    the next save (a checkpoint never holds it)."""
    steps = 12
    cases = [
        {
            "name": name, "check_every": every, "save_every": save, "steps": steps,
            "stop_rank": stop[0] if stop else None, "stop_at": stop[1] if stop else None,
            "nan_rank": nan[0] if nan else None, "nan_at": nan[1] if nan else None,
            "nan_in": nan[2] if nan else None,
        }
        for name, every, save, stop, nan in CHECK_CASES
    ]  # fmt: skip
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    code, out = launch(
        2, "tests/support/launched/dist_checks.py", str(tmp_path / "cases.json"), str(tmp_path), timeout=300
    )
    assert code == 0, out[-4000:]
    for case in cases:
        name, every, save = case["name"], case["check_every"], case["save_every"]
        ranks = [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0] | {"rank": 1} == ranks[1], (name, ranks)  # the same outcome on both ranks
        got = ranks[0]
        if case["stop_at"] is not None:  # asked once stop_at steps were taken: seen at the check after
            k = first_check(case["stop_at"] - 1, every, save, steps)  # a step (maybe that same step)
            assert k - case["stop_at"] <= every
            assert (got["preempted"], got["step"], got["error"]) == (True, k, None), (name, got)
        elif case["nan_at"] is not None:  # seen at the first check from the NaN's step on, before a save
            k = first_check(case["nan_at"] - 1, every, save, steps)
            assert got["preempted"] is None and got["step"] == k, (name, got)
            if case["nan_in"] == "input":
                assert got["error"].startswith(f"non-finite loss at step {k} (epoch 1)"), (name, got)
            else:
                at = case["nan_at"]
                grad = f"non-finite gradient at step {at}, first in parameter 'weight' (epoch 1)"
                grad += ", with a finite loss"
                # checked later than the NaN step, the NaN weights made the loss NaN too
                loss = f"non-finite loss at step {k} (epoch 1)"
                cause = f"the gradient was first non-finite at step {at}, in parameter 'weight'"
                want = grad if k == at else loss
                assert got["error"].startswith(want) and (k == at or cause in got["error"]), (name, got)
            assert all(s < case["nan_at"] for s in got["saves"]), (name, got)
            assert got["saves"] == (list(range(save, k, save)) if save else []), (name, got)
            continue
        else:
            assert (got["preempted"], got["step"], got["error"]) == (False, steps, None), (name, got)
        assert got["saves"] == (list(range(save, got["step"] + 1, save)) if save else []), (name, got)


@pytest.mark.slow
def test_global_batch_must_divide_by_processes_times_grad_accum(shards, tmp_path):
    # 12 divides by 2 processes and by 4 micro-batches, not by 2 × 4: only the product is checked
    code, out = launch(
        2, *train_cmd(shards, tmp_path / "run", "--batch-size", "12", "--grad-accum", "4"), timeout=180
    )
    assert code == 1, out[-4000:]
    assert "--batch-size 12 is the global batch; it must divide by processes × --grad-accum = 2 × 4" in out
    assert not (tmp_path / "run" / "config.json").exists()


def help_entry(text: str, flag: str) -> str:
    """The help of one ``--flag`` in argparse's --help output, whitespace collapsed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.startswith("  -") or not line.strip():
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_help_says_soft_f1_is_per_micro_batch_of_all_processes():
    # the parser `artclf train --help` prints (`python -m artclf.train`: tests/test_architecture.py)
    text = build_parser(TrainConfig, "artclf train", None).format_help()
    f1 = help_entry(text, "--f1-weight")
    assert "summed over each micro-batch of all processes (--batch-size / --grad-accum images" in f1, f1
    assert "global batch)" not in f1
    accum = help_entry(text, "--grad-accum")
    assert "soft-F1 is computed per micro-batch" in accum and "not over --batch-size" in accum, accum
    batch = help_entry(text, "--batch-size")
    assert "per-device batch × processes × --grad-accum" in batch, batch


# --- bf16 autocast through accelerate launch ---------------------------------------------------


@pytest.mark.slow
def test_bf16_autocast_with_grad_accum_trains_two_processes(shards, tmp_path):
    """`accelerate launch --mixed_precision bf16` (after cpu_launch's `no`: the later flag wins),
    2 processes, 2 micro-batches per step: runs to the end, finite losses, float32 weights."""
    run, batch, accum = tmp_path / "run", 8, 2
    code, out = launch(
        2,
        *train_cmd(shards, run, "--batch-size", str(batch), "--grad-accum", str(accum), "--epochs", "1"),
        launch_args=("--mixed_precision", "bf16"),
        timeout=300,
    )
    assert code == 0, out[-4000:]
    # Accelerate turns bf16 on CPU into torch.autocast(cpu, bfloat16) or refuses to start
    # (Accelerator.native_amp); what the run records is the setting the trainer ran with.
    derived = json.loads((run / "config.json").read_text())["derived"]
    assert derived["mixed_precision"] == "bf16" and derived["world_size"] == 2
    per_device = batch // (2 * accum)
    assert derived["per_device_batch"] == per_device
    line = next(line for line in out.splitlines() if "process(es) on" in line)  # cpu:0 is rank 0's device
    assert line.startswith("artclf train: 2 process(es) on cpu") and "mixed precision: bf16," in line, line
    assert f"global batch {batch} = {per_device} per device × 2 × {accum} accumulation" in line, line
    rows = history(run)
    n_train = json.loads((Path(shards) / "_info.json").read_text())["splits"]["train"]["num_samples"]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, n_train // batch)]
    for key in ("train_loss", "train_ce", "train_soft_f1", "val_accuracy", "val_macro_f1"):
        assert math.isfinite(rows[0][key]), (key, rows[0])
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    floats = {k: v.dtype for k, v in state.items() if v.is_floating_point()}
    assert floats and set(floats.values()) == {torch.float32}, floats


def test_a_non_finite_loss_in_any_micro_batch_stops_at_its_step_before_any_save():
    """grad_accum 2, one process, a save every step: micro-batch 0 of step 2 has a NaN input.
    The error names step 2, raised before step 2's save (step 1's is the newest)."""
    from accelerate import Accelerator

    from artclf.data import Batch
    from artclf.train.checkpoint import TrainState
    from artclf.train.engine import train_one_epoch

    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = torch.randn(4, 5, 4), torch.randint(0, 3, (4, 5))
    x[2, 0, 0] = float("nan")  # micro-batch 2 = the first of the second step
    saves: list[int] = []

    def batches():
        for m in range(4):
            yield Batch(images=x[m], labels=y[m], keys=[f"m{m}i{i}" for i in range(5)])

    state = TrainState()
    with pytest.raises(ArtclfError, match=r"non-finite loss at step 2 \(epoch 1\).*; no checkpoint holds it"):
        train_one_epoch(acc, model, optimizer, batches(), num_classes=3, ce_weight=0.3, f1_weight=0.7,
                        grad_accum=2, clip_grad=1.0, lr_of_step=lambda s: 0.1, state=state,
                        stop_requested=lambda: False, on_log=lambda r: None,
                        on_save=lambda: saves.append(state.step), save_every=1, log_every=1,
                        total_steps=2, check_every=1)  # fmt: skip
    assert state.step == 2 and saves == [1]
