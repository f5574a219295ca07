"""shard: read back with plain webdataset, `tar` and timm's `wds` reader, against the manifest;
_info.json schema; kill -9 then rerun; a corrupt sample is found by --verify and skipped by the
pipeline; S3."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from artclf import manifest
from artclf.artists import class_names
from artclf.data import eval_loader, read_info, train_index
from artclf.shard import ShardConfig, shard
from artclf.shard.layout import sample_key
from artclf.train.order import Order
from artclf.train.stream import train_loader
from artclf.transforms import Preprocess
from tests.conftest import run_cli
from tests.shard.test_layout import check_readers
from tests.support import procs

PRE = Preprocess(image_size=64, resize=72)


def expected(work: Path) -> dict[str, dict]:
    """split -> {key: row} of what the manifest says must be packed."""
    out: dict[str, dict] = {}
    for r in manifest.read_manifest(work):
        if r.get("keep") and r.get("split"):
            out.setdefault(r["split"], {})[sample_key(r["path"])] = r
    return out


def test_plain_webdataset_reads_back_the_manifest(work, shards):
    info = json.loads((shards / "_info.json").read_text())
    for split_name, rows in expected(work).items():
        urls = [str(shards / f) for f in info["splits"][split_name]["filenames"]]
        got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
        assert set(got) == set(rows)
        for key, s in got.items():
            r = rows[key]
            assert int(s["cls"]) == r["label"]
            meta = json.loads(s["json"])
            assert (meta["artist"], meta["path"], meta["group"]) == (r["artist"], r["path"], r["group"])
            im = Image.open(io.BytesIO(s["jpg"]))
            assert im.format == "JPEG" and im.mode == "RGB"
            # shorter side = store size, never enlarged; EXIF orientation already applied
            assert min(im.size) == min(96, r["width"], r["height"])
            assert (im.width >= im.height) == (r["width"] >= r["height"])


def test_tar_lists_the_same_members(work, shards):
    info = json.loads((shards / "_info.json").read_text())
    for split_name, s in info["splits"].items():
        keys = []
        for name, length in zip(s["filenames"], s["shard_lengths"], strict=True):
            names = subprocess.run(
                ["tar", "-tf", str(shards / name)], check=True, capture_output=True, text=True
            ).stdout.split()
            assert len(names) == 3 * length
            stems = {n.rsplit(".", 1)[0] for n in names}
            assert {f"{k}.{e}" for k in stems for e in ("cls", "jpg", "json")} == set(names)
            keys += stems
        assert sorted(keys) == sorted(expected(work)[split_name])


def test_info_json_schema(work, shards):
    info = json.loads((shards / "_info.json").read_text())
    assert {"name", "splits", "classes", "store_size", "shards", "manifest_sha256"} <= set(info)
    assert info["classes"] == class_names(
        sorted({r["artist"] for r in manifest.usable(manifest.read_manifest(work))})
    )
    assert info["store_size"] == 96 and info["manifest_sha256"] == manifest.manifest_sha256(work)
    # people's names in class order: each label's artist as the manifest (artists.csv) writes it
    by_label = {r["label"]: r["artist"] for r in manifest.usable(manifest.read_manifest(work))}
    assert info["artists"] == [by_label[i] for i in range(len(info["classes"]))]
    assert "Albrecht Dürer" in info["artists"] and "Albrecht_Durer" in info["classes"]
    assert info["data"] == {"dir": str(manifest.data_dir(work)), "generated_sample": True}
    for split_name, s in info["splits"].items():
        assert s["name"] == split_name
        assert s["num_samples"] == sum(s["shard_lengths"]) == len(expected(work)[split_name])
        assert all(f.startswith(f"{split_name}-") and f.endswith(".tar") for f in s["filenames"])
        for f in s["filenames"]:
            data = (shards / f).read_bytes()
            assert info["shards"][f]["sha256"] == hashlib.sha256(data).hexdigest()
            assert info["shards"][f]["bytes"] == len(data)


def test_timm_reads_the_shard_set_with_its_own_wds_reader(work, shards):
    """timm's `wds/` dataset (the reader whose `_info.json` layout we follow) reads every split:
    each sample once, the manifest's count and label per class."""
    from collections import Counter

    from timm.data import create_dataset

    for split_name, rows in expected(work).items():
        ds = create_dataset(f"wds/{shards.name}", root=str(shards), split=split_name, is_training=False)
        labels = [int(target) for _image, target in ds]
        assert len(labels) == len(ds) == len(rows), split_name
        assert Counter(labels) == Counter(r["label"] for r in rows.values()), split_name


def test_rerun_keeps_complete_shards(work, shards, tmp_path, capsys):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    shard(ShardConfig(work=work, out=str(out), store_size=96, shard_samples=16, workers=1))
    assert "already complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before


def test_sigkill_then_rerun_gives_sound_shards(work, tmp_path):
    out = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "artclf",
        "shard",
        "--work",
        str(work),
        "--out",
        str(out),
        "--store-size",
        "96",
        "--shard-samples",
        "2",
        "--workers",
        "1",
    ]
    with procs.running(cmd) as proc:
        procs.wait_for(lambda: len(list(out.glob("_shards/*.json"))) >= 3, 120, "3 shards packed", proc)
        procs.kill_tree(proc.pid)
        proc.wait()
    assert not (out / "_info.json").exists()
    res = run_cli(*cmd[3:])
    assert res.returncode == 0, res.stderr
    assert "already complete" in res.stdout
    assert run_cli("shard", "--verify", out).returncode == 0
    info = read_info(str(out))
    for split_name, rows in expected(work).items():
        keys = [s["__key__"] for s in wds.WebDataset(info["splits"][split_name]["urls"], shardshuffle=False)]
        assert sorted(keys) == sorted(rows)  # none missing, none doubled


def corrupt_one_sample(src: Path, dest: Path) -> str:
    """Copy a shard set, overwrite the middle of one jpg in place (sizes unchanged)."""
    shutil.copytree(src, dest)
    info = json.loads((dest / "_info.json").read_text())
    name = info["splits"]["train"]["filenames"][0]
    with tarfile.open(dest / name) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    with open(dest / name, "r+b") as f:
        f.seek(member.offset_data + 2)  # keep SOI, destroy the headers after it
        f.write(b"\x00" * min(400, member.size - 4))
    return member.name.rsplit(".", 1)[0]


def test_corrupt_sample_reported_by_verify_and_skipped_by_the_pipeline(shards, tmp_path):
    bad_dir = tmp_path / "bad"
    key = corrupt_one_sample(shards, bad_dir)
    res = run_cli("shard", "--verify", bad_dir)
    assert res.returncode == 1
    assert key in res.stdout and "does not decode" in res.stdout
    assert "sha256" in res.stdout
    info = read_info(str(bad_dir))
    seen, failed = [], []
    for b in eval_loader(info, "train", PRE, 8, 0, 0, 1):
        seen += b.keys
        failed += b.failed
    assert failed == [key]
    assert len(seen) == info["splits"]["train"]["num_samples"] - 1
    # train reads each sample by its span (_index.json): the corrupt one is skipped, each epoch
    index = train_index(info, str(bad_dir))
    order = Order(len(index), 4, seed=0)
    batches = [b for epoch in range(2) for b in train_loader(index, order, epoch, 0, PRE, 0)]
    assert len(batches) == 2 * order.steps
    failed = [k for b in batches for k in b.failed]
    assert set(failed) == {key} and len(failed) in (1, 2)  # 2: unless an epoch left it out


def test_s3_round_trip(work, s3_server, tmp_path, monkeypatch):
    url = f"s3://{s3_server.bucket}/shards-{tmp_path.name}"
    res = run_cli(
        "shard",
        "--work",
        work,
        "--out",
        url,
        "--store-size",
        "96",
        "--shard-samples",
        "16",
        env=s3_server.env(),
    )
    assert res.returncode == 0, res.stderr
    assert s3_server.secret_key not in res.stdout + res.stderr
    res = run_cli("shard", "--verify", url, env=s3_server.env())
    assert res.returncode == 0, res.stdout + res.stderr
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    info = read_info(url)
    index = train_index(info, url)  # _index.json, then ranged GETs
    order = Order(len(index), 8, seed=0)
    train_keys = [k for b in train_loader(index, order, 0, 0, PRE, 2) for k in b.keys]
    assert len(train_keys) == len(set(train_keys)) == 8 * (info["splits"]["train"]["num_samples"] // 8)
    assert set(train_keys) <= set(expected(work)["train"])
    keys = [k for b in eval_loader(info, "val", PRE, 8, 2, 0, 1) for k in b.keys]
    assert sorted(keys) == sorted(expected(work)["val"])


def test_s3_wrong_credentials_are_a_clear_error_without_the_secret(work, s3_server, tmp_path):
    secret = "wrongSecretKey" + tmp_path.name
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": secret}
    res = run_cli("shard", "--work", work, "--out", f"s3://{s3_server.bucket}/x", env=env)
    assert res.returncode == 1
    assert f"s3://{s3_server.bucket}/x" in res.stderr and "SignatureDoesNotMatch" in res.stderr
    assert "cannot tell" not in res.stderr  # a HEAD's 403 is not taken for "not written" with bad keys
    assert secret not in res.stderr + res.stdout


def test_s3_into_an_empty_prefix_when_a_head_answers_403(work, s3_server, tmp_path):
    """Credentials that may PUT but whose HEAD of a missing key answers 403 (AWS does so without
    s3:ListBucket; SeaweedFS answers 404 there, so its write-only identity stands in): shard
    cannot tell what an earlier run wrote, says so once, and packs everything."""
    url = f"s3://{s3_server.bucket}/shards-{tmp_path.name}"
    env = s3_server.env(write_only=True)
    args = ["--work", work, "--out", url, "--store-size", "96", "--shard-samples", "16"]
    res = run_cli("shard", *args, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    said = [line for line in res.stderr.splitlines() if "403" in line]
    assert len(said) == 1 and "cannot tell" in said[0] and "s3:ListBucket" in said[0], res.stderr[-3000:]
    for secret in s3_server.write_only:
        assert secret not in res.stdout + res.stderr
    res = run_cli("shard", "--verify", url, env=s3_server.env())  # all of it, with the full identity
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("gpus, workers", [(1, 2), (64, 1)])
def test_auto_sizes_each_split_for_its_readers(work, tmp_path, gpus, workers):
    """``--shard-samples auto`` on the sample set: ``tar`` lists every sample of the manifest once,
    in shards whose lengths _info.json gives, and what plain webdataset hands each (GPU, worker)
    meets shards/README.md's rule. 64 GPUs: more than the val split's samples, so some GPUs can
    get no val shard, and the line says how many."""
    out = tmp_path / "s"
    res = run_cli("shard", "--work", work, "--out", out, "--store-size", "96", "--workers", "1",
                  "--shard-samples", "auto", "--readers", gpus, "--reader-workers", workers)  # fmt: skip
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "_info.json").read_text())
    for split_name, rows in expected(work).items():
        s = info["splits"][split_name]
        keys, lengths = [], []
        for name in s["filenames"]:
            tar = subprocess.run(["tar", "-tf", str(out / name)], check=True, capture_output=True, text=True)
            stems = sorted({n.rsplit(".", 1)[0] for n in tar.stdout.split()})
            keys += stems
            lengths.append(len(stems))
        assert sorted(keys) == sorted(rows) and lengths == s["shard_lengths"]
        assert check_readers(split_name, lengths, gpus, workers) == [], (split_name, lengths)
        line = next(x for x in res.stdout.splitlines() if x.startswith(f"shard: {split_name}: "))
        assert f"{len(rows)} samples in {len(lengths)} shards of {min(lengths)}" in line, line
        if len(rows) < gpus:
            assert f"warning: {gpus - len(rows)} of {gpus} GPUs get no {split_name} shard" in line, line
    assert info["sizing"] == {"shard_samples": "auto", "readers": gpus, "reader_workers": workers}
    assert run_cli("shard", "--verify", out).returncode == 0
