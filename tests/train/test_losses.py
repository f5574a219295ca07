"""The combined loss against scikit-learn's F1, and 2 real ranks (DDP, gloo) against 1 process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from artclf.train.losses import combined_loss, soft_f1_loss
from tests.support.cpu_launch import accelerate_cpu

C = 6


def batch(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels over classes 0..C-2: class C-1 never is a target."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g), torch.randint(0, C - 1, (n,), generator=g)


def test_hard_predictions_equal_one_minus_sklearn_macro_f1_over_present_classes():
    _, y = batch()
    pred = torch.randint(0, C, (len(y),), generator=torch.Generator().manual_seed(1))
    assert (pred == C - 1).any()  # predicted but never a target: an absent class with FP > 0
    logits = F.one_hot(pred, C).float() * 1000  # softmax is exactly one-hot
    present = np.unique(y.numpy())
    ref = f1_score(y.numpy(), pred.numpy(), labels=present, average="macro", zero_division=0)
    assert soft_f1_loss(logits, y, C).item() == pytest.approx(1 - ref, abs=1e-6)
    all_classes = f1_score(y.numpy(), pred.numpy(), labels=range(C), average="macro", zero_division=0)
    assert abs(all_classes - ref) > 0.01  # the exclusion is what makes them agree


def test_perfect_batch_of_one_class_scores_zero():
    y = torch.zeros(8, dtype=torch.long)
    logits = F.one_hot(y, C).float() * 1000
    assert soft_f1_loss(logits, y, C).item() == pytest.approx(0, abs=1e-6)  # not 1 − 1/C


def test_soft_counts_by_hand():
    logits = torch.log(torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    y = torch.tensor([0, 1])
    # class 0: TP .75, FP .5, FN .25 → 1.5/2.25; class 1: TP .5, FP .25, FN .5 → 1/1.75
    expected = 1 - (1.5 / 2.25 + 1 / 1.75) / 2
    assert soft_f1_loss(logits, y, 2).item() == pytest.approx(expected, abs=1e-6)


def test_gradient_is_finite_and_matches_finite_differences():
    logits, y = batch(12)
    logits = logits.double().requires_grad_()
    soft_f1_loss(logits, y, C).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda z: soft_f1_loss(z, y, C), (logits.detach().requires_grad_(),))


def test_float32_under_autocast():
    logits, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = combined_loss(logits.bfloat16(), y, C)
    assert loss.dtype == parts["soft_f1"].dtype == torch.float32


def test_combined_weights():
    logits, y = batch()
    ce, f1 = F.cross_entropy(logits, y), soft_f1_loss(logits, y, C)
    loss, parts = combined_loss(logits, y, C)
    assert loss.item() == pytest.approx(0.3 * ce.item() + 0.7 * f1.item(), rel=1e-6)
    assert parts["ce"].item() == pytest.approx(ce.item()) and parts["soft_f1"].item() == pytest.approx(
        f1.item()
    )
    loss, _ = combined_loss(logits, y, C, ce_weight=2.0, f1_weight=0.5)
    assert loss.item() == pytest.approx(2 * ce.item() + 0.5 * f1.item(), rel=1e-6)


def one_step(inp: dict, chunks: int = 1) -> dict:
    """1 process, no all-reduce: the mean of the losses of ``chunks`` equal slices (1: whole batch)."""
    model = torch.nn.Linear(*inp["weight"].T.shape)
    with torch.no_grad():
        model.weight.copy_(inp["weight"])
        model.bias.copy_(inp["bias"])
    logits = model(inp["x"])
    logits.retain_grad()
    out = [
        combined_loss(lg, yy, C, inp["ce_weight"], inp["f1_weight"], distributed=False)
        for lg, yy in zip(logits.chunk(chunks), inp["y"].chunk(chunks), strict=True)
    ]
    loss = sum(loss for loss, _ in out) / chunks
    loss.backward()
    return dict(
        loss=loss.detach(),
        ce=[parts["ce"] for _, parts in out],
        soft_f1=[parts["soft_f1"] for _, parts in out],
        logits_grad=logits.grad,
        weight_grad=model.weight.grad,
        bias_grad=model.bias.grad,
    )


@pytest.mark.slow
def test_two_ranks_ddp_equal_one_process_on_the_concatenated_batch(tmp_path):
    g = torch.Generator().manual_seed(3)
    # Rank 0 gets classes {0,1,2}, rank 1 {0,1,3,4}; class 5 is absent from both: classes 3 and 4
    # are missing from rank 0's half but present globally, so only the global mask is right.
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0] + [0, 1, 3, 4, 3, 4, 1, 3])
    inp = dict(
        x=torch.randn(16, 7, generator=g),
        y=y,
        weight=torch.randn(C, 7, generator=g) * 0.5,
        bias=torch.randn(C, generator=g) * 0.1,
        ce_weight=0.3,
        f1_weight=0.7,
    )
    torch.save(inp, tmp_path / "in.pt")
    res = accelerate_cpu(2, "tests/support/launched/dist_losses.py", str(tmp_path / "in.pt"), str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    assert {r["ddp"] for r in ranks} == {"DistributedDataParallel"}

    ref, per_half = one_step(inp), one_step(inp, chunks=2)
    close = dict(atol=1e-6, rtol=1e-5)
    for r in ranks:
        # soft-F1: every rank reports the value of the concatenated batch
        torch.testing.assert_close(r["soft_f1"], ref["soft_f1"][0], **close)
        # CE: every rank reports the mean over its own half
        torch.testing.assert_close(r["ce"], per_half["ce"][r["rank"]], **close)
    # ... so the mean over ranks of CE and of the total loss are those of the concatenated batch
    torch.testing.assert_close((ranks[0]["ce"] + ranks[1]["ce"]) / 2, ref["ce"][0], **close)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ref["loss"], **close)
    # Before DDP: each rank's logits gradient is W × the 1-process gradient of its rows ...
    torch.testing.assert_close(torch.cat([r["logits_grad"] for r in ranks]), 2 * ref["logits_grad"], **close)
    # ... and after DDP's 1/W averaging the weights get exactly the 1-process gradient, on every rank.
    for r in ranks:
        torch.testing.assert_close(r["weight_grad"], ref["weight_grad"], **close)
        torch.testing.assert_close(r["bias_grad"], ref["bias_grad"], **close)
    # The check has teeth: per-rank soft-F1 (no all-reduce) gives a visibly different gradient.
    assert (per_half["weight_grad"] - ref["weight_grad"]).abs().max() > 1e-3
