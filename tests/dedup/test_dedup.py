"""dedup on the sample set against its planted truth; its four steps in parts (killed and rerun)
equal one pass; the store is reused; steps out of order are clear errors; mislabels are kept out;
missing weights give the offline error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from artclf import manifest
from artclf.dedup import DedupConfig, candidates, dedup, features, geometry, phash, store
from artclf.dedup.report import SHOWN
from artclf.errors import ArtclfError
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


@pytest.fixture(scope="module")
def all_drawn(hashes_only, tmp_path_factory):
    """``hashes_only`` rerun from its feature cache with a montage of every group: (work, report)."""
    work = tmp_path_factory.mktemp("drawn") / "w"
    shutil.copytree(hashes_only[0], work, ignore=shutil.ignore_patterns("*.png"))
    return work, dedup(DedupConfig(work=work, weights="none", workers=2, montages=100_000))


def real_pairs(work, cfg: DedupConfig) -> dict[tuple[str, str], dict[str, float]]:
    """Reference: the detector pairs of ``work``'s stored features, found again in one process and
    in memory (no shares, no verification parts), both ways round, each with its score from the
    hashes' Hamming distance (mirrored either way) or the cosine."""
    ok = manifest.usable(manifest.read_manifest(work))
    keys = sorted({r["sha256"] for r in ok})
    model_id = _model_id(vars(cfg)) if cfg.use_cnn else None
    ix = store.index(store.folder_of(work), model_id, keys)
    h, hf, e = store.search_arrays(ix, cfg.use_cnn)
    _, local = store.read_local(ix.folder, ix.names, ix.chunk, ix.offset, ix.counts)
    found = {"hash": candidates.hash_pairs(h, hf, cfg.neighbors, cfg.hash_threshold)}
    if cfg.use_cnn:
        found["cnn"] = candidates.cnn_candidates(e, cfg.neighbors, cfg.cnn_cut)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for kind, pairs in found.items():
        inliers = geometry.verify(pairs, local, cfg.min_inliers, cfg.min_keypoints)
        for (a, b), n in zip(pairs.tolist(), inliers.tolist(), strict=True):
            if n < cfg.min_inliers and (kind == "cnn" or n >= 0):
                continue  # geometry rejects it (a hash pair without keypoints stands)
            if kind == "hash":
                bits = min(phash.hamming(h[a], h[b]), phash.hamming(hf[a], h[b]), phash.hamming(h[a], hf[b]))
                sim = 1 - 2 * bits / phash.BITS
            else:
                sim = float(e[a].astype(np.float32) @ e[b].astype(np.float32))
            out.setdefault((keys[a], keys[b]), {})[kind] = sim
            out.setdefault((keys[b], keys[a]), {})[kind] = sim
    return out


def assert_labels_are_real_pairs(work, cfg: DedupConfig) -> None:
    """Every member's label in groups.json names a pair a detector found (or an exact copy) that
    touches it, with that pair's score: none is invented for the kept image."""
    sha = {r["path"]: r["sha256"] for r in manifest.read_manifest(work)}
    real = real_pairs(work, cfg)
    for g in json.loads((work / "dedup/groups.json").read_text()):
        paths = [m["path"] for m in g["members"]]
        for m in sorted(g["members"], key=lambda m: m["by"] != "exact"):
            by, sim, other = m["by"], m["similarity"], m.get("with")
            where = f"group {g['group']}: {m['path']} labelled {by} {sim} with {other}"
            if by == "exact":
                twins = [p for p in paths if p != m["path"] and sha[p] == sha[m["path"]]]
                assert twins, f"{where}, but no other member has its bytes"
                assert other in twins and sim == 1.0, where
            else:
                assert other in paths and other != m["path"], where
                found = real.get((sha[m["path"]], sha[other]), {})
                assert by in found, f"{where}, but the detectors found {found or 'no pair'}"
                assert sim == pytest.approx(found[by], abs=1e-3), where


def test_group_labels_are_pairs_the_detectors_found(hashes_only):
    work, _, _ = hashes_only
    assert_labels_are_real_pairs(work, DedupConfig(work=work, weights="none", workers=2))


def test_montages_are_listed_largest_group_first(hashes_only, all_drawn):
    for work, report in (hashes_only[:2], all_drawn):
        listed = report.get("montages")
        assert listed, f"{work}/dedup/report.json lists no montages"
        sizes = [m["size"] for m in listed]
        assert sizes == sorted(sizes, reverse=True), sizes
        assert {m["file"] for m in listed} == {p.name for p in (work / "dedup").glob("group_*.png")}
        assert report == json.loads((work / "dedup/report.json").read_text())
    groups = json.loads((all_drawn[0] / "dedup/groups.json").read_text())
    assert sizes == sorted((g["size"] for g in groups), reverse=True)  # every group drawn
    assert report["largest_groups"][0] == {
        "group": groups[0]["group"],
        "size": groups[0]["size"],
        "montage": f"group_{groups[0]['group']}.png",
    }


def test_mislabel_montages_say_every_image_was_dropped_and_why(all_drawn):
    work, report = all_drawn
    groups = [g for g in json.loads((work / "dedup/groups.json").read_text()) if g["mislabel"]]
    assert groups, "the quality set plants cross-artist copies"
    for g in groups:
        text = Image.open(work / f"dedup/group_{g['group']}.png").text  # what the sheet draws, as PNG text
        title = text.get("Title", "")
        assert f"all {g['size']} images were dropped" in title, (g["group"], text)
        assert "which label is right" in title and ", ".join(g["artists"]) in title, title


@pytest.mark.slow
def test_mobilenet_features_find_every_kind_of_copy(quality_set, mobilenet, tmp_path):
    flags = dict(arch="mobilenet_v2", weights=str(mobilenet), montages=0)
    _, s = dedup_score(quality_set, tmp_path / "w", **flags)
    assert s["precision"] == 1.0  # geometric verification (default): docs/benchmarks.md
    assert s["recall"] == 1.0
    assert_labels_are_real_pairs(tmp_path / "w", DedupConfig(work=tmp_path / "w", workers=2, **flags))


def killed_midway(work, args: list, done_glob: str) -> None:
    """Run ``artclf dedup --work work *args`` in its own process group and SIGKILL the group as
    soon as its first checkpoint file (``done_glob`` under work/dedup) appears."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "artclf", "dedup", "--work", str(work), *map(str, args)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list((work / "dedup").glob(done_glob)):
        assert proc.poll() is None, f"ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _common(mobilenet) -> dict:
    """A low CNN cut: hundreds of candidates for geometry to verify (and mostly reject)."""
    return dict(
        arch="mobilenet_v2", weights=str(mobilenet), workers=0, montages=0, image_size=128, cnn_threshold=0.7
    )


@pytest.mark.slow
def test_parts_killed_and_rerun_then_merge_equal_one_pass(work, mobilenet, tmp_path, capsys):
    """Features in 2 parts (part 0 SIGKILLed mid-way and rerun), pairs cut into 3 shares
    (verification part 1 SIGKILLed mid-way and rerun), merge: the one process's result, and each
    rerun computes only what its killed run had not written."""
    work = fresh_work(work, tmp_path / "w")  # ingested; its hash-only dedup left out
    single = fresh_work(work, tmp_path / "single")
    common = _common(mobilenet)
    dedup(DedupConfig(work=single, **common))
    flags = _flags(common)

    def step(**kw) -> str:  # in this process: what it printed
        capsys.readouterr()
        dedup(DedupConfig(work=work, **common, **kw))
        return capsys.readouterr().out

    keys = sorted({r["sha256"] for r in manifest.usable(manifest.read_manifest(work))})
    mine, mid = keys[0::2], _model_id(common)

    killed_midway(work, ["--part", 0, "--num-parts", 2, "--chunk-images", 4, *flags], "features/*.npz")
    have = len(store.done(store.folder_of(work), mid, set(mine)))
    assert 0 < have < len(mine), (have, len(mine))
    with capsys.disabled():
        print(f"killed part 0 after {have} of {len(mine)} images")
    out = step(part=0, num_parts=2, chunk_images=4)
    assert f"{len(mine)} images, {have} in the store, computing {len(mine) - have}" in out
    step(part=1, num_parts=2)

    step(pairs=True, num_parts=3)
    plan = json.loads((work / "dedup/pairs/plan.json").read_text())
    shares = [np.load(work / f"dedup/pairs/{plan['id']}/share-{i:05d}-of-00003.npz") for i in range(3)]
    distinct = [len({(a, b) for a, b in zip(z["a"].tolist(), z["b"].tolist(), strict=True)}) for z in shares]
    assert sum(distinct) == plan["distinct_pairs"] and max(distinct) - min(distinct) <= 1, distinct
    step(verify_part=0, num_parts=3)
    batches = f"pairs/{plan['id']}/verified-00001-of-00003-batches-of-1/*.npy"
    killed_midway(work, ["--verify-part", 1, "--num-parts", 3, "--verify-batch", 1, *flags], batches)
    read_back = len(list((work / "dedup").glob(batches)))
    assert 0 < read_back < distinct[1], (read_back, distinct)
    with capsys.disabled():
        print(f"killed verification part 1 after {read_back} of {distinct[1]} pairs")
    out = step(verify_part=1, num_parts=3, verify_batch=1)
    assert f"verified {distinct[1] - read_back} now ({read_back} read back)" in out
    step(verify_part=2, num_parts=3)
    step(merge=True)

    strip = [{k: r.get(k) for k in ("path", "group", "keep")} for r in manifest.read_manifest(work)]
    assert strip == [{k: r.get(k) for k in ("path", "group", "keep")} for r in manifest.read_manifest(single)]
    assert (work / "dedup/groups.json").read_text() == (single / "dedup/groups.json").read_text()
    reports = [json.loads((w / "dedup/report.json").read_text()) for w in (work, single)]
    for r in reports:  # timings differ from run to run
        del r["seconds"], r["pairs"]["verify_ms_per_pair"]
    assert reports[0] == reports[1]
    ix = [store.index(store.folder_of(w), mid, keys) for w in (work, single)]
    for x, y in zip(*(store.search_arrays(i, True) for i in ix), strict=True):
        np.testing.assert_array_equal(x, y)  # the features the parts made are the one process's
    (_, a), (_, b) = (store.read_local(i.folder, i.names, i.chunk, i.offset, i.counts) for i in ix)
    for x, y in zip(a, b, strict=True):
        for f in ("xy", "desc", "xy_m", "desc_m"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    assert_labels_are_real_pairs(work, DedupConfig(work=work, **common))


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
        *(["--cnn-threshold", str(common["cnn_threshold"])] if "cnn_threshold" in common else []),
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


def test_steps_out_of_order_are_clear_errors(work, tmp_path):
    """Each step names what is missing and the command that makes it."""
    copy = fresh_work(work, tmp_path / "w")
    flags = dict(weights="none", workers=0, montages=0)
    with pytest.raises(ArtclfError, match=r"plan.json: no candidate pairs yet; run `artclf dedup --pairs"):
        dedup(DedupConfig(work=copy, merge=True, **flags))
    shutil.copytree(work / "dedup/features", copy / "dedup/features")
    dedup(DedupConfig(work=copy, pairs=True, num_parts=2, **flags))
    with pytest.raises(ArtclfError, match=r"cut into 2 shares, not --num-parts 3"):
        dedup(DedupConfig(work=copy, verify_part=0, num_parts=3, **flags))
    with pytest.raises(ArtclfError, match=r"other settings \(hash_threshold: \[20\], this run \[12\]\)"):
        dedup(DedupConfig(work=copy, verify_part=0, num_parts=2, hash_threshold=12, **flags))
    dedup(DedupConfig(work=copy, verify_part=1, num_parts=2, **flags))
    with pytest.raises(ArtclfError, match=r"verification part\(s\) \[0\] of 2 not done.*--verify-part i"):
        dedup(DedupConfig(work=copy, merge=True, **flags))
    chunk = sorted((copy / "dedup/features").glob("*.npz"))[0]
    lost = len(np.load(chunk)["keys"])
    chunk.unlink()
    with pytest.raises(
        ArtclfError, match=rf"{lost} of \d+ images have no features .* --part i --num-parts n"
    ):
        dedup(DedupConfig(work=copy, pairs=True, num_parts=2, **flags))
    res = run_cli("dedup", "--work", copy, "--merge", "--pairs")
    assert res.returncode == 2 and "one per call" in res.stderr


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
