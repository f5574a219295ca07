"""`artclf sample-data`: Kaggle layout, scaled counts, determinism, and that the truth file is true."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from artclf.artists import ARTISTS, CSV_COLUMNS, fold
from artclf.sample_data import SampleDataConfig, generate, paintings
from artclf.sample_data import plan as sample_plan
from tests.conftest import REPO, tree_digest

SCALE, MAX_SIDE = 0.02, 96
DURER_NFD = unicodedata.normalize("NFD", "Albrecht_Dürer")
MOJIBAKE = "Albrecht_Du╠êrer"  # written out, not derived the way the module derives it


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample") / "kaggle"
    truth = generate(SampleDataConfig(out=out, scale=SCALE, max_side=MAX_SIDE, seed=3))
    assert json.loads((out / "sample_truth.json").read_text(encoding="utf-8")) == truth
    return out, truth


def read_csv(root: Path) -> list[dict]:
    with open(root / "artists.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def odd_paths(truth: dict) -> set[str]:
    return {o["path"] for o in truth["odd_files"]}


def test_layout_matches_kaggle(sample):
    root, truth = sample
    rows = read_csv(root)
    assert [r["name"] for r in rows] == [a.name for a in ARTISTS]
    assert [r["id"] for r in rows] == [str(i) for i in range(50)]
    assert all(r["wikipedia"] == "http://en.wikipedia.org/wiki/" + r["name"].replace(" ", "_") for r in rows)
    folders = sorted(p.name for p in (root / "images" / "images").iterdir())
    assert len(folders) == 51 and MOJIBAKE in folders and DURER_NFD in folders
    # Every csv name maps to exactly one primary folder by the ASCII fold; Dürer also to the mojibake one.
    by_fold = {fold(r["name"]): r["name"] for r in rows}
    assert {fold(f) for f in folders} == set(by_fold)
    assert {f for f in folders if fold(f) == "Albrecht_Durer"} == {DURER_NFD, MOJIBAKE}
    for folder in folders:
        names = sorted(p.name for p in (root / "images" / "images" / folder).iterdir())
        jpgs = [n for n in names if n.endswith(".jpg")]
        assert set(names) - set(jpgs) <= {"Thumbs.db"}
        numbers = sorted(int(re.fullmatch(re.escape(folder) + r"_(\d+)\.jpg", n).group(1)) for n in jpgs)
        assert numbers == list(range(1, len(jpgs) + 1)), folder


def test_counts_follow_the_scaled_real_distribution(sample):
    root, truth = sample
    for row, artist in zip(read_csv(root), ARTISTS, strict=True):
        folder = root / truth["folders"][artist.name]
        n_files = len(list(folder.iterdir()))
        assert n_files == max(4, round(artist.paintings * SCALE)) == int(row["paintings"])
        assert n_files == truth["counts"][artist.name]
    assert truth["folders"]["Albrecht Dürer"] == f"images/images/{DURER_NFD}"


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    def run(name: str, seed: int, workers: int) -> dict[str, str]:
        generate(SampleDataConfig(out=tmp_path / name, scale=0.01, max_side=64, seed=seed, workers=workers))
        return tree_digest(tmp_path / name)

    a, b, c = run("a", 7, 1), run("b", 7, 2), run("c", 8, 2)
    assert a == b
    images = [p for p in a if p.endswith(".jpg") and a[p] != hashlib.sha256(b"").hexdigest()]
    assert sum(a[p] != c.get(p) for p in images) > 0.9 * len(images)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_every_file_not_listed_as_odd_is_a_plain_rgb_jpeg(sample):
    root, truth = sample
    odd = odd_paths(truth)
    copies = {m["path"] for g in truth["duplicate_groups"] for m in g["members"] if m["kind"] != "original"}
    for path in (root / "images" / "images").rglob("*"):
        rel = path.relative_to(root).as_posix().replace(MOJIBAKE, DURER_NFD)
        if path.is_dir() or rel in odd:
            continue
        with Image.open(path) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB"), rel
            im.load()
            if rel not in copies:  # copies are resized and cropped; paintings keep the drawn size
                assert 0.6 - 0.03 <= im.width / im.height <= 1.6 + 0.03, rel
                assert MAX_SIDE * 0.6 - 1 <= max(im.size) <= MAX_SIDE, rel


def test_odd_files_are_what_the_truth_says(sample):
    root, truth = sample
    assert {o["kind"] for o in truth["odd_files"]} == {
        "grayscale",
        "cmyk",
        "exif_rotated",
        "png_as_jpg",
        "truncated",
        "zero_bytes",
        "not_an_image",
    }
    assert sum(o["artist"] == "Albrecht Dürer" and o["kind"] == "grayscale" for o in truth["odd_files"]) == 2
    for odd in truth["odd_files"]:
        path, kind = root / odd["path"], odd["kind"]
        assert path.is_file() and odd["usable"] == (kind not in ("truncated", "zero_bytes", "not_an_image"))
        assert fold(path.parent.name) == fold(odd["artist"])
        if kind == "zero_bytes":
            assert path.stat().st_size == 0
        elif kind == "not_an_image":
            with pytest.raises(UnidentifiedImageError):
                Image.open(path)
        elif kind == "truncated":
            with Image.open(path) as im, pytest.raises(OSError):
                im.load()
        else:
            with Image.open(path) as im:
                im.load()
                want = {
                    "grayscale": ("JPEG", "L"),
                    "cmyk": ("JPEG", "CMYK"),
                    "png_as_jpg": ("PNG", "RGB"),
                    "exif_rotated": ("JPEG", "RGB"),
                }[kind]
                assert (im.format, im.mode) == want and path.suffix == ".jpg"
                if kind == "exif_rotated":
                    assert im.getexif().get(0x0112) in (6, 8)
                    assert_upright(ImageOps.exif_transpose(im), odd, truth["seed"])


def assert_upright(img: Image.Image, odd: dict, seed: int) -> None:
    """Redraw the painting from its RNG stream: exif_transpose must give it back the right way up."""
    artist = [a.name for a in ARTISTS].index(odd["artist"])
    rng = paintings.rng_for(seed, paintings.PAINT, artist, int(odd["path"].rsplit("_", 1)[1][:-4]))
    style = paintings.make_styles(seed)[artist]
    upright = np.asarray(paintings.paint(style, paintings.image_size(rng, MAX_SIDE), rng), float)
    assert img.size == upright.shape[1::-1]
    assert np.abs(np.asarray(img.convert("RGB"), float) - upright).mean() < 15  # JPEG error only


def test_duplicate_folder_is_a_byte_copy_of_durer(sample):
    root, truth = sample
    dup = truth["duplicate_folder"]
    assert dup["path"] == f"images/images/{MOJIBAKE}" and dup["copy_of"] == f"images/images/{DURER_NFD}"
    primary = {
        p.name.replace(DURER_NFD, MOJIBAKE, 1): p.read_bytes() for p in (root / dup["copy_of"]).iterdir()
    }
    copy = {p.name: p.read_bytes() for p in (root / dup["path"]).iterdir()}
    assert copy == primary and len(copy) == dup["files"] == truth["counts"]["Albrecht Dürer"]


def thumb(path: Path, margin: float = 0.0, flip: bool = False) -> np.ndarray:
    """8x8 grey thumbnail of the image less ``margin`` on each side, mirrored back for flips."""
    with Image.open(path) as im:
        w, h = im.size
        box = (round(margin * w), round(margin * h), round(w * (1 - margin)), round(h * (1 - margin)))
        small = np.asarray(im.convert("L").crop(box).resize((8, 8), Image.Resampling.BOX), float)
    return (small[:, ::-1] if flip else small).ravel()


def test_duplicate_groups_are_copies_of_their_original(sample):
    root, truth = sample
    groups = truth["duplicate_groups"]
    assert any(g["cross_artist"] for g in groups) and any(not g["cross_artist"] for g in groups)
    for g in groups:
        members = g["members"]
        assert [m["kind"] for m in members].count("original") == 1 and members[0]["kind"] == "original"
        assert g["cross_artist"] == (len({m["artist"] for m in members}) > 1)
        original = root / members[0]["path"]
        for m in members:
            path = root / m["path"]
            assert path.is_file() and m["path"] not in odd_paths(truth)
            assert fold(path.parent.name) == fold(m["artist"])
            assert m["kind"] in ("original", "resize_reencode", "color_cast", "grayscale", "flip", "crop")
            # Crops cut 3-10 % per side: compare with the original less the mean cut. Unrelated
            # paintings of one artist correlate below ~0.3 at this size.
            margin = 0.065 if m["kind"] == "crop" else 0.0
            r = np.corrcoef(thumb(original, margin), thumb(path, flip=m["kind"] == "flip"))[0, 1]
            assert r > (0.6 if m["kind"] == "crop" else 0.9), (m, r)


def test_no_quirks_gives_a_clean_set(tmp_path):
    truth = generate(SampleDataConfig(out=tmp_path / "clean", scale=0.01, max_side=64, quirks=False))
    assert truth["odd_files"] == [] and truth["duplicate_folder"] is None
    folders = sorted(p.name for p in (tmp_path / "clean" / "images" / "images").iterdir())
    assert len(folders) == 50 and "Albrecht_Dürer" in folders  # NFC, like artists.csv
    for path in (tmp_path / "clean" / "images" / "images").rglob("*.jpg"):
        with Image.open(path) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB")
            im.load()


def test_config_rejects_bad_values(tmp_path):
    for bad in ({"scale": 0}, {"max_side": 8}, {"seed": -1}, {"workers": -2}, {"sizes": "huge"}):
        with pytest.raises(ValueError):
            SampleDataConfig(out=tmp_path, **bad)


def test_kaggle_sizes_follow_the_real_originals():
    """--sizes kaggle, 4,000 draws: median ~1.5 MP, most of 1-3 MP, ~2 % above 10 MP (the Kaggle
    zip: 2.29 GiB for 8,446 JPEGs); a painting of the median size encodes to about 270 KB."""
    import io

    from artclf.sample_data.paintings import image_size, make_styles, paint

    rng = np.random.default_rng(0)
    sizes = [image_size(rng, 384, "kaggle") for _ in range(4000)]  # max_side is not used
    mp = np.array([w * h / 1e6 for w, h in sizes])
    assert 1.3 <= float(np.median(mp)) <= 1.7
    assert 0.55 <= float(np.mean((mp >= 1) & (mp <= 3))) <= 0.8
    assert 0.01 <= float(np.mean(mp > 10)) <= 0.035 and mp.max() <= 14.0
    aspect = np.array([w / h for w, h in sizes])
    assert aspect.min() >= 0.59 and aspect.max() <= 1.61
    buf = io.BytesIO()
    paint(make_styles(0)[0], (1500, 1000), np.random.default_rng(1)).save(buf, "JPEG", quality=90)
    assert 150_000 <= len(buf.getvalue()) <= 450_000


def test_cli(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "artclf.sample_data", str(out), "--scale", "0.01", "--max-side", "64"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert str(out) in first.stdout and (out / "artists.csv").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1 and str(out) in again.stderr and "not an empty folder" in again.stderr


def test_copies_sit_in_the_big_classes_at_full_scale():
    """Planning alone (no drawing): ~8-12 % extra copies in the biggest classes, few in the small."""
    _, _, truth = sample_plan.plan(SampleDataConfig(out=Path("unused"), scale=1.0, max_side=0))
    copies: dict[str, int] = {}
    for g in truth["duplicate_groups"]:
        for m in g["members"][1:]:
            copies[m["artist"]] = copies.get(m["artist"], 0) + 1
    for big in ("Vincent van Gogh", "Edgar Degas", "Pablo Picasso"):
        assert 0.08 <= copies[big] / truth["counts"][big] <= 0.12, big
    small = [a.name for a in ARTISTS if a.paintings < 100]
    assert sum(copies.get(a, 0) for a in small) / sum(truth["counts"][a] for a in small) < 0.03
    assert any(len(g["members"]) == 3 for g in truth["duplicate_groups"])
    assert 1 <= sum(g["cross_artist"] for g in truth["duplicate_groups"]) <= 3
    assert sum(truth["counts"].values()) == sum(a.paintings for a in ARTISTS)  # 8,446, as the real set


def test_unseen_artists_lie_outside_the_kaggle_layout_in_styles_no_known_artist_has(sample, tmp_path):
    from artclf.sample_data.paintings import UNSEEN, make_styles, unseen_styles

    root, truth = sample
    out = tmp_path / "with_unseen"
    truth3 = generate(SampleDataConfig(out=out, scale=SCALE, max_side=MAX_SIDE, seed=3, unseen=3))
    # the 50 artists' files are byte for byte those of the set without --unseen
    assert tree_digest(out / "images") == tree_digest(root / "images")
    assert (out / "artists.csv").read_bytes() == (root / "artists.csv").read_bytes()
    assert {k: v for k, v in truth3.items() if k != "unseen"} == {
        k: v for k, v in truth.items() if k != "unseen"
    }
    assert truth["unseen"] == {}
    assert list(truth3["unseen"]) == list(UNSEEN[:3])
    for folder in truth3["unseen"].values():
        files = sorted((out / folder).iterdir())
        assert folder.startswith("unseen/") and len(files) == sample_plan.UNSEEN_MIN
        for f in files:
            with Image.open(f) as im:
                assert im.format == "JPEG" and max(im.size) <= MAX_SIDE
    # no unseen style repeats a known one's stroke kind, layout and background tone all at once
    known = {(s.stroke, s.layout, round(s.palette[0][2], 3)) for s in make_styles(3)}
    unseen = [(s.stroke, s.layout, round(s.palette[0][2], 3)) for s in unseen_styles(3, len(UNSEEN))]
    assert len(set(unseen)) == len(UNSEEN) and not known & set(unseen)
    with pytest.raises(ValueError, match="unseen"):
        SampleDataConfig(out=tmp_path / "x", unseen=len(UNSEEN) + 1)


def test_hard_negatives_are_different_works_and_leave_the_rest_as_it_was(tmp_path):
    """--hard-negatives repaints some paintings as look-alikes (and their copies follow); every
    other file keeps its bytes; the truth lists sets of different works that look alike."""
    plain_root, out = tmp_path / "plain", tmp_path / "hard"
    plain_truth = generate(SampleDataConfig(out=plain_root, scale=0.1, max_side=MAX_SIDE, seed=3))
    truth = generate(SampleDataConfig(out=out, scale=0.1, max_side=MAX_SIDE, seed=3, hard_negatives=True))
    assert plain_truth["hard_negatives"] == []
    kinds = {h["kind"] for h in truth["hard_negatives"]}
    assert kinds == {"template", "dark", "grid"}
    copies = {g["members"][0]["path"]: [m["path"] for m in g["members"]] for g in truth["duplicate_groups"]}
    repainted = {f for h in truth["hard_negatives"] for p in h["members"] for f in copies.get(p, [p])}
    repainted |= {
        f.replace(DURER_NFD, MOJIBAKE) for f in repainted if DURER_NFD in f
    }  # the zip's second Dürer
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(plain_root).as_posix() for p in plain_root.rglob("*") if p.is_file())
    same = [f for f in files if f not in repainted and f != "sample_truth.json"]
    assert len(same) > 0.8 * len(files)
    assert all((out / f).read_bytes() == (plain_root / f).read_bytes() for f in same)
    assert all((out / f).read_bytes() != (plain_root / f).read_bytes() for f in repainted)

    def pixels(path: str) -> np.ndarray:
        return np.asarray(Image.open(out / path).convert("RGB"), dtype=np.float32)

    for h in truth["hard_negatives"]:
        ims = [pixels(p) for p in h["members"]]
        assert len(ims) >= 2 and len(set(h["members"])) == len(ims)
        if h["kind"] == "template":  # one artist, one size; different strokes
            assert len({p.rsplit("/", 2)[1] for p in h["members"]}) == 1
            assert len({im.shape for im in ims}) == 1
            for a, b in itertools.combinations(ims, 2):
                assert np.abs(a - b).mean() > 2
        elif h["kind"] == "dark":
            assert all(im.mean() < 40 for im in ims)
        else:
            assert all("/Piet_Mondrian/" in p for p in h["members"])
            assert all((im.min(axis=2) > 200).mean() > 0.3 for im in ims)  # mostly white ground
