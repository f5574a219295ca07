"""A rerun knows what it resumes (artclf/train/runconfig.py): flags that change the result are
refused by name unless --resume-with-changes, which records them; free flags pass; the data is
compared by its index; an architecture change is never accepted. The real CLI refusal and a
resume with changes run in tests/train/test_train.py, on a finished run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from artclf.config import to_dict
from artclf.errors import ArtclfError
from artclf.train.config import TrainConfig
from artclf.train.runconfig import FREE, check, effective

RUN = TrainConfig(shards="s3://bucket/shards", run="runs/a")


@pytest.fixture
def record(tmp_path):
    path = tmp_path / "runs" / "a" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"config": to_dict(RUN), "derived": {"train_index_sha256": "d" * 64}}))
    return path


def now(**changes) -> dict:
    return to_dict(dataclasses.replace(RUN, **changes))


def test_every_flag_is_either_free_or_compared():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert names >= FREE  # no stale name: a renamed flag would silently become free
    compared = names - FREE
    assert {"arch", "image_size", "batch_size", "epochs", "lr", "seed", "ce_weight", "f1_weight"} <= compared


def test_the_same_flags_and_free_ones_resume(record):
    assert check(record, now(), "d" * 64, allow=False, step=5) is None
    free = now(
        workers=2,
        save_every=7,
        log_every=1,
        data_timeout=5.0,
        storage_patience=0.0,
        shards="/copy/elsewhere",
        compile=True,
    )
    assert check(record, free, "d" * 64, allow=False, step=5) is None


def test_result_changing_flags_are_refused_by_name(record):
    with pytest.raises(ArtclfError) as e:
        check(record, now(epochs=3, lr=1e-3), "d" * 64, allow=False, step=5)
    text = str(e.value)
    assert "--epochs: 15 in the run, 3 now" in text and "--lr: 0.0003 in the run, 0.001 now" in text
    assert "--resume-with-changes" in text


def test_resume_with_changes_returns_the_change_and_effective_applies_it(record):
    change = check(record, now(epochs=3), "d" * 64, allow=True, step=5)
    assert change == {"step": 5, "flags": {"epochs": [15, 3]}}
    data = json.loads(record.read_text())
    data["changes"] = [change]
    record.write_text(json.dumps(data))
    assert effective(data)["epochs"] == 3
    assert check(record, now(epochs=3), "d" * 64, allow=False, step=9) is None  # already accepted


def test_another_data_set_or_arch_is_refused_even_with_changes_allowed(record):
    with pytest.raises(ArtclfError, match="index sha256 dddddddddddd… in the run, eeeeeeeeeeee… now") as e:
        check(record, now(), "e" * 64, allow=True, step=5)
    assert "--resume-with-changes" not in str(e.value) and "one data set" in str(e.value)
    with pytest.raises(ArtclfError, match="hold 'resnet50' weights") as e:
        check(record, now(arch="resnet18"), "d" * 64, allow=True, step=5)
    assert "--arch: 'resnet50' in the run, 'resnet18' now" in str(e.value)
    assert "broken" not in str(e.value)
