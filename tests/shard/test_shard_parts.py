"""shard in parts without SLURM: ``--part K --num-parts N`` as plain processes, then ``--merge``,
against the single-process ``shards`` fixture (tests/conftest.py) as the reference."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from tests.conftest import run_cli, tree_digest
from tests.support import procs

# The flags of the `shards` fixture (tests/conftest.py), whose output is the reference.
FLAGS = ["--store-size", "96", "--shard-samples", "16"]
PARTS = 3


def part_cmd(work: Path, out: Path, k: int) -> list[str]:
    return [sys.executable, "-m", "artclf", "shard", "--work", str(work), "--out", str(out), *FLAGS,
            "--workers", "1", "--part", str(k), "--num-parts", str(PARTS)]  # fmt: skip


def run_parts(work: Path, out: Path, parts: list[int]) -> dict[int, str]:
    """Run the ``parts`` at once (as an array job would), each to its end; part -> output."""
    with contextlib.ExitStack() as stack:
        running = {k: stack.enter_context(procs.running(part_cmd(work, out, k))) for k in parts}
        for proc in running.values():
            assert proc.wait(timeout=120) == 0, procs.output(proc)
        return {k: procs.output(proc) for k, proc in running.items()}


def shard_names(info: dict) -> list[str]:
    """Every shard in the order the parts count them: train, val, test, each in file order."""
    return [name for split in ("train", "val", "test") for name in info["splits"][split]["filenames"]]


def test_parts_then_merge_equal_one_process(work, shards, tmp_path):
    out = tmp_path / "shards"
    names = shard_names(json.loads((shards / "_info.json").read_text()))
    assert sorted(names) == sorted(p.name for p in shards.glob("*.tar")) and len(names) > PARTS
    said = run_parts(work, out, list(range(PARTS)))
    for k, text in said.items():  # part k packs shards k, k + N, k + 2N, …
        assert f"shard: part {k}/{PARTS}: {len(names[k::PARTS])} shards" in text, text
    assert not (out / "_info.json").exists()  # only the merge writes it

    res = run_cli("shard", "--work", work, "--out", out, *FLAGS, "--merge")
    assert res.returncode == 0, res.stdout + res.stderr
    # byte-identical to the one-process run: every shard, record and _info.json
    assert tree_digest(out) == tree_digest(shards)
    records = sorted((out / "_shards").glob("*.json"))
    assert [p.name for p in records] == sorted(f"{n}.json" for n in names)
    for path in records:
        record = json.loads(path.read_text())
        assert record == json.loads((shards / "_shards" / path.name).read_text())
        tar = (out / record["name"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(tar).hexdigest() and record["bytes"] == len(tar)

    res = run_cli("shard", "--verify", out)
    assert res.returncode == 0, res.stdout + res.stderr
    splits = json.loads((shards / "_info.json").read_text())["splits"].values()
    samples = sum(sum(s["shard_lengths"]) for s in splits)
    assert f"verify: {len(names)} shards, {samples} samples, all sound" in res.stdout


def test_merge_before_every_part_is_done_names_what_is_missing(work, shards, tmp_path):
    out = tmp_path / "shards"
    names = shard_names(json.loads((shards / "_info.json").read_text()))
    run_parts(work, out, [0, 1])
    missing = names[2::PARTS]  # what part 2 would have packed
    res = run_cli("shard", "--work", work, "--out", out, *FLAGS, "--merge")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"--merge: {len(missing)} shard(s) missing or incomplete" in res.stderr, res.stderr
    for name in missing[:3]:  # the message gives the first three as examples
        assert str(out / name) in res.stderr, res.stderr
    assert "rerun the parts" in res.stderr
    assert not (out / "_info.json").exists()  # nothing a trainer could mistake for a shard set

    # the part that was missing, then the merge: complete
    run_parts(work, out, [2])
    res = run_cli("shard", "--work", work, "--out", out, *FLAGS, "--merge")
    assert res.returncode == 0, res.stdout + res.stderr
    assert tree_digest(out) == tree_digest(shards)
