"""ingest: every planted odd file reported with the right reason, good files kept, Dürer one
class, the duplicate folder detected; clear exits for broken layouts. The reference for
"what is in the folder" is the sample set's truth file and a direct look with Pillow."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from artclf import manifest
from artclf.artists import CSV_COLUMNS, class_names
from artclf.errors import ArtclfError
from artclf.ingest import IngestConfig, ingest, scan_file
from tests.conftest import run_cli


def make_kaggle(root: Path, artists: dict[str, int], folders: dict[str, str] | None = None) -> Path:
    """A minimal Kaggle layout: ``artists`` maps csv name -> image count."""
    folders = folders or {}
    images = root / "images" / "images"
    root.mkdir(parents=True)
    with open(root / "artists.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for i, (name, n) in enumerate(artists.items()):
            w.writerow([i, name, "", "", "", "", "", n])
    for i, (name, n) in enumerate(artists.items()):
        folder = folders.get(name, name.replace(" ", "_"))
        (images / folder).mkdir(parents=True)
        for k in range(1, n + 1):
            Image.new("RGB", (40 + k, 30), (10 * i, 20 * k % 255, 99)).save(
                images / folder / f"{folder}_{k}.jpg"
            )
    return root


@pytest.fixture(scope="module")
def ingested(sample_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    report = ingest(IngestConfig(data_dir=sample_dir, work=work, workers=2))
    truth = json.loads((sample_dir / "sample_truth.json").read_text())
    return report, manifest.read_manifest(work), truth, work


def test_every_planted_odd_file_is_reported_with_its_reason(ingested):
    report, rows, truth, _ = ingested
    by_path = {r["path"]: r for r in rows}
    expected_reason = {"truncated": "truncated", "zero_bytes": "zero bytes", "not_an_image": "not an image"}
    notes = {(o["path"], o["note"].split(" ")[0]) for o in report["odd"]}
    for odd in truth["odd_files"]:
        row = by_path[odd["path"]]
        if odd["usable"]:
            assert row["status"] == manifest.OK, odd
        else:
            assert row["status"].startswith(expected_reason[odd["kind"]]), (odd, row["status"])
            assert {"path": odd["path"], "status": row["status"]} in report["unusable"]
        if odd["kind"] == "grayscale":
            assert row["mode"] == "L" and (odd["path"], "mode") in notes
        if odd["kind"] == "cmyk":
            assert row["mode"] == "CMYK" and (odd["path"], "mode") in notes
        if odd["kind"] == "png_as_jpg":
            assert row["format"] == "PNG" and (odd["path"], "PNG") in notes
        if odd["kind"] == "exif_rotated":
            assert row["orientation"] in (6, 8) and (odd["path"], "EXIF") in notes
            with Image.open(Path(truth_root(ingested)) / odd["path"]) as im:
                assert (row["width"], row["height"]) == im.size[::-1]  # displayed size is turned


def truth_root(ingested) -> str:
    return ingested[0]["data_dir"]


def test_good_files_kept_with_true_hash_and_size(ingested, sample_dir):
    _, rows, truth, _ = ingested
    bad = {o["path"] for o in truth["odd_files"] if not o["usable"]}
    dup_folder = truth["duplicate_folder"]["path"]
    files = [p for p in (sample_dir / "images" / "images").rglob("*") if p.is_file()]
    assert len(rows) == len(files)
    for r in rows:
        p = sample_dir / r["path"]
        assert r["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert r["bytes"] == p.stat().st_size
        if r["path"].startswith(dup_folder + "/"):
            assert r["status"].startswith("duplicate folder of")
        elif r["path"] not in bad:
            assert r["status"] == manifest.OK, r
            with Image.open(p) as im:
                assert im.mode == r["mode"]


def test_durer_is_one_class_and_labels_follow_the_sorted_folders(ingested):
    report, rows, truth, _ = ingested
    ok = manifest.usable(rows)
    assert {r["artist"] for r in ok if "rer" in r["path"].split("/")[2]} == {"Albrecht Dürer"}
    assert len({r["label"] for r in ok}) == 50
    names = class_names(sorted({r["artist"] for r in ok}))
    assert all(
        names[r["label"]].replace("_", " ")
        == unicodedata.normalize("NFKD", r["artist"]).encode("ascii", "ignore").decode()
        for r in ok
    )
    assert [d["folder"] for d in report["duplicate_folders"]] == [truth["duplicate_folder"]["path"]]
    for name, info in report["per_artist"].items():
        assert info["files"] == info["csv_paintings"] == truth["counts"][name]


def test_manifest_is_sorted_and_rerun_is_identical(ingested, sample_dir, tmp_path):
    _, rows, _, work = ingested
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    ingest(IngestConfig(data_dir=sample_dir, work=tmp_path, workers=1))
    assert manifest.manifest_path(tmp_path).read_bytes() == manifest.manifest_path(work).read_bytes()


def test_scan_file_reasons(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "t.txt").write_text("hello")
    Image.new("RGB", (300, 200), "red").save(tmp_path / "big.jpg")
    data = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert scan_file(str(tmp_path / "z.jpg"), 10**8)["status"] == "zero bytes"
    assert scan_file(str(tmp_path / "t.txt"), 10**8)["status"].startswith("not an image")
    assert scan_file(str(tmp_path / "cut.jpg"), 10**8)["status"].startswith("truncated")
    assert scan_file(str(tmp_path / "big.jpg"), 1000)["status"].startswith("too large (300x200 px")
    assert scan_file(str(tmp_path / "big.jpg"), 10**8)["status"] == "ok"


def test_junk_after_jpeg_end_is_not_called_truncated(tmp_path):
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "a.jpg")
    (tmp_path / "a.jpg").write_bytes((tmp_path / "a.jpg").read_bytes() + b"trailing junk")
    assert scan_file(str(tmp_path / "a.jpg"), 10**8)["status"] == "ok"


def test_two_different_folders_for_one_artist_fail(tmp_path):
    root = make_kaggle(tmp_path / "d", {"Albrecht Dürer": 2, "Jackson Pollock": 1})
    other = root / "images/images/Albrecht_Du╠êrer"
    other.mkdir()
    Image.new("RGB", (9, 9), "white").save(other / "x.jpg")
    with pytest.raises(ArtclfError, match="both map to 'Albrecht Dürer' but hold different files"):
        ingest(IngestConfig(data_dir=root, work=tmp_path / "w", workers=1))


DURER_NFD = unicodedata.normalize("NFD", "Albrecht_Dürer")
DURER_ONCE = DURER_NFD.encode("utf-8").decode("cp437")  # Albrecht_Du╠êrer
DURER_TWICE = DURER_ONCE.encode("utf-8").decode("cp437")  # Albrecht_DuΓòá├¬rer


@pytest.mark.parametrize("copies", [(DURER_ONCE, DURER_TWICE), (DURER_NFD, DURER_ONCE, DURER_TWICE)])
def test_the_folder_needing_the_fewest_repairs_is_primary(tmp_path, copies):
    """Byte-identical copies of Dürer: the least-mangled name is kept, every other one is a
    duplicate (name order alone would pick the doubly mangled one: 'Γ' < '╠')."""
    primary, *others = copies
    root = make_kaggle(
        tmp_path / "d", {"Albrecht Dürer": 2, "Jackson Pollock": 1}, {"Albrecht Dürer": primary}
    )
    images = root / "images/images"
    for other in others:
        shutil.copytree(images / primary, images / other)
    report = ingest(IngestConfig(data_dir=root, work=tmp_path / "w", workers=1))
    assert sorted(d["folder"] for d in report["duplicate_folders"]) == sorted(
        f"images/images/{o}" for o in others
    )
    assert {d["copy_of"] for d in report["duplicate_folders"]} == {f"images/images/{primary}"}
    durer = [r for r in manifest.read_manifest(tmp_path / "w") if r["artist"] == "Albrecht Dürer"]
    kept = {r["path"].split("/")[2] for r in durer if r["status"] == manifest.OK}
    assert kept == {primary} and report["per_artist"]["Albrecht Dürer"]["usable"] == 2


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_csv", "artists.csv: not found"),
        ("unknown_folder", "Pablo_Picaso: matches no artist in artists.csv (closest: 'Pablo_Picasso')"),
        ("missing_folder", "no folder for artist(s) ['Jackson Pollock']"),
        ("empty_class", "no usable image for artist(s) ['Jackson Pollock']"),
    ],
)
def test_broken_layouts_exit_1_with_a_clear_message(tmp_path, breakage, message):
    root = make_kaggle(tmp_path / "d", {"Pablo Picasso": 2, "Jackson Pollock": 1})
    images = root / "images/images"
    if breakage == "no_csv":
        (root / "artists.csv").unlink()
    elif breakage == "unknown_folder":
        (images / "Pablo_Picaso").mkdir()
    elif breakage == "missing_folder":
        for p in (images / "Jackson_Pollock").iterdir():
            p.unlink()
        (images / "Jackson_Pollock").rmdir()
    elif breakage == "empty_class":
        (images / "Jackson_Pollock/Jackson_Pollock_1.jpg").write_bytes(b"")
    res = run_cli("ingest", root, "--work", tmp_path / "w")
    assert res.returncode == 1, res.stderr
    assert message in res.stderr
    assert not (tmp_path / "w" / "manifest.jsonl").exists()  # nothing half-written


def summary_counts(text: str) -> tuple[int, dict[str, int]]:
    """The ``ingest: N files …`` line -> (N, {part: count}) for each count the line gives for a
    kind of file (usable, unusable, in a duplicate folder, not read); classes and seconds aside."""
    line = next(x for x in text.splitlines() if x.startswith("ingest: "))
    total = int(re.match(r"ingest: (\d+) files", line).group(1))
    body = line.split(" files", 1)[1].split(" classes")[0]
    terms = re.findall(r"(\d+) (usable|unusable|in [^+;,]*|not read)", body)
    parts = {what.strip(): int(n) for n, what in terms}
    return total, parts


def files_on_disk(root: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(root / "images" / "images"))


def test_the_summary_line_accounts_for_every_file_on_disk(sample_dir, tmp_path, capsys):
    """882 files = 846 usable + 3 unusable + the 33 of the duplicate folder: every file under
    images/images is counted once, by os.walk, and report.json agrees with the line."""
    truth = json.loads((sample_dir / "sample_truth.json").read_text())
    assert truth["duplicate_folder"]["files"] > 0  # the set holds such a folder
    report = ingest(IngestConfig(data_dir=sample_dir, work=tmp_path, workers=1))
    total, parts = summary_counts(capsys.readouterr().out)
    on_disk = files_on_disk(sample_dir)
    assert total == on_disk == report["files"], (total, on_disk, report["files"])
    assert sum(parts.values()) == total, (parts, total)
    assert parts["usable"] == report["usable"] and parts["unusable"] == len(report["unusable"])
    dup = [v for k, v in parts.items() if k.startswith("in ")]
    assert dup == [truth["duplicate_folder"]["files"]] == [report["duplicate_files"]], parts
    assert [d["files"] for d in report["duplicate_folders"]] == dup
    assert (
        report["usable"] + len(report["unusable"]) + report["duplicate_files"] + len(report["not_read"])
        == report["files"]
    )


def test_files_outside_the_artist_folders_are_counted_as_not_read(tmp_path, capsys):
    root = make_kaggle(tmp_path / "d", {"Albrecht Dürer": 2, "Jackson Pollock": 1})
    images = root / "images/images"
    shutil.copytree(images / "Albrecht_Dürer", images / DURER_ONCE)
    (images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (images / "Jackson_Pollock" / "extra").mkdir()
    Image.new("RGB", (9, 9)).save(images / "Jackson_Pollock" / "extra" / "x.jpg")
    report = ingest(IngestConfig(data_dir=root, work=tmp_path / "w", workers=1))
    total, parts = summary_counts(capsys.readouterr().out)
    assert total == files_on_disk(root) == 7 and sum(parts.values()) == 7, parts
    assert parts["usable"] == 3 and parts["not read"] == 2, parts
    loose, nested = "images/images/.DS_Store", "images/images/Jackson_Pollock/extra/x.jpg"
    assert report["not_read"] == [loose, nested]
