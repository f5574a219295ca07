"""Temperature scaling, the open-set threshold and AUROC against independent references (SciPy's
bounded scalar minimiser, scikit-learn's roc_auc_score), and what the trainer stores in model.pt
against a plain single-process pass over val."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score

from artclf.data import read_info
from artclf.metrics.calibration import (
    T_RANGE,
    auroc,
    calibrate,
    fit_temperature,
    is_known,
    nll,
    softmax,
    threshold_for,
)
from artclf.metrics.classification import expected_calibration_error
from artclf.model import load_model, save_model
from artclf.transforms import Preprocess, decode, eval_image


def overconfident(n: int = 600, c: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model that is right ~60 % of the time and far too sure of itself."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)) * 6
    z[np.arange(n), y] += 5
    return z, y


def test_fitted_temperature_minimises_the_nll_as_scipy_finds_it():
    z, y = overconfident()
    t = fit_temperature(z, y)
    ref = minimize_scalar(lambda s: nll(z, y, s), bounds=T_RANGE, method="bounded", options={"xatol": 1e-9})
    assert t == pytest.approx(ref.x, rel=1e-4)
    assert t > 1.5  # overconfident logits are softened
    # an underconfident model is sharpened (T < 1)
    t_small = fit_temperature(z / 10, y)
    assert t_small == pytest.approx(t / 10, rel=1e-3)


def test_an_all_correct_val_keeps_the_temperature_in_range():
    y = np.arange(20) % 4
    z = np.eye(4)[y] * 3.0  # every argmax right: the NLL keeps falling as T -> 0, no minimum
    t = fit_temperature(z, y)
    assert T_RANGE[0] <= t < 1 and nll(z, y, t) < 1e-6


def test_calibration_lowers_ece_and_reports_it_as_metrics_computes_it():
    z, y = overconfident()
    out = calibrate(z, y, reject_rate=0.05)
    cal, ood = out["calibration"], out["open_set"]
    t = cal["temperature"]
    assert cal["ece_before"] == pytest.approx(expected_calibration_error(softmax(z), y))
    assert cal["ece_after"] == pytest.approx(expected_calibration_error(softmax(z, t), y))
    assert cal["ece_after"] < cal["ece_before"] / 3
    assert cal["nll_after"] < cal["nll_before"]
    scores = softmax(z, t).max(1)
    assert (scores < ood["threshold"]).mean() == pytest.approx(ood["val_rejected"])
    assert ood["val_rejected"] <= 0.05 and (scores <= ood["threshold"]).mean() > 0.05
    assert is_known(softmax(z, t), ood).mean() == pytest.approx(1 - ood["val_rejected"])
    assert is_known(softmax(z, t), None).all()


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_threshold_rejects_at_most_the_rate_and_no_lower_one_would_do(rate):
    scores = np.random.default_rng(3).random(997).round(2)  # many ties
    t = threshold_for(scores, rate)
    assert (scores < t).mean() <= rate
    if rate:
        higher = np.unique(scores)[np.unique(scores) > t]
        assert (scores < higher[0]).mean() > rate  # the next threshold up rejects too many


def test_auroc_equals_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(1)
    known, unseen = rng.normal(1, 1, 300), rng.normal(0, 1, 80)
    for k, u in ((known, unseen), (known.round(1), unseen.round(1))):
        ref = roc_auc_score(np.r_[np.ones(len(k)), np.zeros(len(u))], np.r_[k, u])
        assert auroc(k, u) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="both"):
        auroc(known, np.array([]))


def test_the_classifier_divides_by_the_stored_temperature(model_pt, tmp_path):
    raw, blob = load_model(model_pt)
    assert float(raw.temperature) == 1.0  # a file without calibration
    path = tmp_path / "model.pt"
    extra = {
        k: v for k, v in blob.items() if k not in ("format", "arch", "classes", "preprocess", "state_dict")
    }
    save_model(path, raw, blob["classes"], Preprocess.from_dict(blob["preprocess"]), blob["arch"],
               {**extra, "calibration": {"temperature": 2.5}})  # fmt: skip
    hot, _ = load_model(path)
    cold, _ = load_model(path, calibrated=False)
    x = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(hot(x) * 2.5, cold(x))
        torch.testing.assert_close(cold(x), raw(x))


def test_trainer_stores_what_a_plain_pass_over_val_gives(trained_run, shards):
    """model.pt's temperature and threshold, recomputed from val logits of a single-process
    loop over the val shards (webdataset, no artclf loader) with the uncalibrated weights."""
    model, blob = load_model(trained_run / "model.pt", calibrated=False)
    pre = Preprocess.from_dict(blob["preprocess"])
    info = read_info(str(shards))
    xs, ys = [], []
    for s in wds.DataPipeline(wds.SimpleShardList(info["splits"]["val"]["urls"]), wds.tarfile_to_samples()):
        xs.append(eval_image(decode(s["jpg"]), pre))
        ys.append(int(s["cls"]))
    with torch.inference_mode():
        z = model(torch.stack(xs)).double().numpy()
    y = np.array(ys)
    cal, ood = blob["calibration"], blob["open_set"]
    assert cal["n"] == len(y) == info["splits"]["val"]["num_samples"]
    ref = minimize_scalar(lambda s: nll(z, y, s), bounds=T_RANGE, method="bounded", options={"xatol": 1e-9})
    assert cal["temperature"] == pytest.approx(ref.x, rel=1e-3)
    scores = softmax(z, cal["temperature"]).max(1)
    assert ood["threshold"] == pytest.approx(threshold_for(scores, 0.05), rel=1e-4)
    assert ood["reject_rate"] == 0.05 and ood["val_rejected"] <= 0.05
    # the calibrated model gives those probabilities itself
    hot, _ = load_model(trained_run / "model.pt")
    with torch.inference_mode():
        p = torch.softmax(hot(torch.stack(xs)).double(), 1).numpy()
    np.testing.assert_allclose(p, softmax(z, cal["temperature"]), atol=1e-5)
