"""dedup on the sample set against its planted truth; parts + merge equal one pass; the cache is
reused; mislabels are kept out; missing weights give the offline error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from artclf import manifest
from artclf.dedup import DedupConfig, dedup, features
from artclf.dedup.report import SHOWN
from artclf.ingest import IngestConfig, ingest
from bench.dedup_quality import WHOLE_PICTURE, score
from tests.conftest import assert_figure, run_cli
from tests.support.mobilenet_weights import convert


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    return convert(tmp_path_factory.mktemp("weights") / "mobilenet_v2.pt")


@pytest.fixture(scope="module")
def quality_set(tmp_path_factory):
    """Scale 0.1 (the issue's floor for quality figures): about 850 images."""
    from artclf.sample_data import SampleDataConfig, generate

    root = tmp_path_factory.mktemp("q")
    generate(SampleDataConfig(out=root / "data", scale=0.1, seed=3, max_side=192))
    ingest(IngestConfig(data_dir=root / "data", work=root / "work", workers=2))
    return root


def fresh_work(src, dest):
    """A copy of an ingested work folder without dedup outputs."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("dedup"))
    return dest


def dedup_score(quality_set, dest, **flags) -> tuple[dict, dict]:
    """Run dedup on a fresh copy of the quality set; (its report, pairwise scores against the
    set's truth)."""
    work = fresh_work(quality_set / "work", dest)
    report = dedup(DedupConfig(work=work, workers=2, **flags))
    truth = json.loads((quality_set / "data/sample_truth.json").read_text())
    s = score(truth, manifest.read_manifest(work))
    print(json.dumps(s, indent=1))
    return report, s


@pytest.fixture(scope="module")
def hashes_only(quality_set, tmp_path_factory):
    """One hash-only dedup of the quality set, shared by the tests that read it: (work, report,
    scores)."""
    work = tmp_path_factory.mktemp("hashes") / "w"
    report, s = dedup_score(quality_set, work, weights="none", montages=1)
    return work, report, s


def test_hashes_alone_find_whole_picture_copies(hashes_only):
    work, report, s = hashes_only
    assert s["precision"] >= 0.95
    assert s["recall_whole_picture"] >= 0.90
    # --montages 1: the largest group, plus the groups behind each per-artist loss warning
    largest = json.loads((work / "dedup/groups.json").read_text())[0]["group"]
    warned = {g for w in report["loss"]["warnings"] for g in w["groups"][:SHOWN]}
    drawn = {int(p.stem.split("_")[1]) for p in (work / "dedup").glob("group_*.png")}
    assert drawn == {largest} | warned
    assert_figure(work / f"dedup/group_{largest}.png")


@pytest.mark.slow
def test_mobilenet_features_find_every_kind_of_copy(quality_set, mobilenet, tmp_path):
    _, s = dedup_score(quality_set, tmp_path / "w", arch="mobilenet_v2", weights=str(mobilenet), montages=0)
    assert s["precision"] == 1.0  # geometric verification (default): docs/benchmarks.md
    assert s["recall"] == 1.0


@pytest.mark.slow
def test_parts_then_merge_equal_one_pass(work, mobilenet, tmp_path):
    work = fresh_work(work, tmp_path / "w")  # ingested; its hash-only dedup left out
    single = fresh_work(work, tmp_path / "single")
    common = dict(arch="mobilenet_v2", weights=str(mobilenet), workers=0, montages=0, image_size=128)
    dedup(DedupConfig(work=single, **common))
    for part in range(3):
        res = run_cli("dedup", "--work", work, "--part", part, "--num-parts", 3, *_flags(common))
        assert res.returncode == 0, res.stderr
    dedup(DedupConfig(work=work, merge=True, **common))
    strip = [{k: r.get(k) for k in ("path", "group", "keep")} for r in manifest.read_manifest(work)]
    assert strip == [{k: r.get(k) for k in ("path", "group", "keep")} for r in manifest.read_manifest(single)]
    a = features.Features.load(work / "dedup", _model_id(common))
    b = features.Features.load(single / "dedup", _model_id(common))
    keys = sorted(b.hash)
    assert sorted(a.hash) == keys
    for x, y in zip(a.arrays(keys), b.arrays(keys), strict=True):
        np.testing.assert_allclose(x, y, atol=2e-3)  # fp16 storage
    for k in keys:  # the keypoints the verification reads were made in the parts
        for f in ("xy", "desc", "xy_m", "desc_m"):
            np.testing.assert_array_equal(getattr(a.local[k], f), getattr(b.local[k], f))


def _flags(common: dict) -> list[str]:
    return [
        "--arch",
        common["arch"],
        "--weights",
        common["weights"],
        "--workers",
        "0",
        "--montages",
        "0",
        "--image-size",
        str(common["image_size"]),
    ]


def _model_id(common: dict) -> dict:
    from pathlib import Path

    st = Path(common["weights"]).stat()
    return {
        "arch": common["arch"],
        "weights": common["weights"],
        "image_size": common["image_size"],
        "file": {"bytes": st.st_size, "mtime": int(st.st_mtime)},
    }


def test_rerun_reuses_the_cache(work, tmp_path, monkeypatch):
    """``work`` was deduplicated with these flags: a rerun on a copy reads the cached features."""
    copy = tmp_path / "w"
    shutil.copytree(work, copy)

    def boom(*a, **k):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(features, "compute", boom)
    dedup(DedupConfig(work=copy, weights="none", workers=0, montages=0))
    assert (copy / "dedup/groups.json").read_text() == (work / "dedup/groups.json").read_text()
    assert manifest.read_manifest(copy) == manifest.read_manifest(work)


def test_cross_artist_groups_are_reported_and_kept_out(quality_set, hashes_only):
    work, report, _ = hashes_only
    truth = json.loads((quality_set / "data/sample_truth.json").read_text())
    rows = {r["path"]: r for r in manifest.read_manifest(work)}
    cross = [g for g in truth["duplicate_groups"] if g["cross_artist"]]
    assert cross, "the sample set plants cross-artist groups"
    whole = [g for g in cross if {m["kind"] for m in g["members"]} <= {"original", *WHOLE_PICTURE}]
    assert whole, "the quality set plants cross-artist copies the hashes must find"
    for g in whole:
        members = [rows[m["path"]] for m in g["members"]]
        assert len({r["group"] for r in members}) == 1  # found, so nothing of it is trained on
        assert not any(r["keep"] for r in members)
        mislabel = {"group": members[0]["group"], "artists": sorted({r["artist"] for r in members})}
        assert mislabel in report["mislabel_groups"]
    groups = json.loads((work / "dedup/groups.json").read_text())
    assert all(sum(m["keep"] for m in g["members"]) == (0 if g["mislabel"] else 1) for g in groups)


def test_missing_pretrained_weights_is_a_clear_error(work, tmp_path):
    work = fresh_work(work, tmp_path / "w")
    res = run_cli("dedup", "--work", work, env={"TORCH_HOME": str(tmp_path / "th")})
    assert res.returncode == 1
    assert f"{tmp_path}/th/hub/checkpoints/resnet50-11ad3fa6.pth" in res.stderr
    assert "artclf weights fetch" in res.stderr and "--weights PATH" in res.stderr
