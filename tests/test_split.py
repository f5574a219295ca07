"""split: no duplicate group straddles splits, per-artist shares within one image of the target,
reproducible for a seed, clear errors; checked against direct counts of the manifest."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from artclf import manifest
from artclf.errors import ArtclfError
from artclf.split import SplitConfig, check_no_leak, quotas, split

RATIOS = (0.8, 0.1, 0.1)


def make_rows(sizes: dict[str, int], dup_every: int = 3) -> list[dict]:
    """Usable rows per artist; every ``dup_every``-th image has two dropped copies in its group."""
    rows, group = [], 0
    for artist, n in sizes.items():
        for i in range(n):
            members = 3 if i % dup_every == 0 else 1
            for m in range(members):
                rows.append(
                    {
                        "path": f"{artist}/{i}_{m}.jpg",
                        "artist": artist,
                        "status": "ok",
                        "group": group,
                        "keep": m == 0,
                    }
                )
            group += 1
    rows.append(
        {"path": "zz/broken.jpg", "artist": "A", "status": "zero bytes", "group": None, "keep": False}
    )
    return rows


def run_split(tmp_path, rows, **kw):
    manifest.write_manifest(tmp_path, rows)
    split(SplitConfig(work=tmp_path, **kw))
    return manifest.read_manifest(tmp_path)


SIZES = {"A": 877, "B": 24, "C": 4, "D": 3, "E": 37}


def test_groups_never_straddle_and_copies_follow_their_kept_image(tmp_path):
    rows = run_split(tmp_path, make_rows(SIZES))
    by_group = defaultdict(set)
    for r in rows:
        if r["group"] is not None:
            by_group[r["group"]].add(r["split"])
    assert all(len(s) == 1 and None not in s for s in by_group.values())
    assert next(r for r in rows if r["status"] != "ok")["split"] is None


def test_each_artist_within_one_image_of_its_share(tmp_path):
    rows = run_split(tmp_path, make_rows(SIZES))
    kept = [r for r in rows if r["keep"]]
    for artist, n in SIZES.items():
        got = Counter(r["split"] for r in kept if r["artist"] == artist)
        for name, ratio in zip(("train", "val", "test"), RATIOS, strict=True):
            assert got[name] >= 1
            if n * min(RATIOS) >= 1:  # below that, "one in each split" wins over the share
                assert abs(got[name] - ratio * n) <= 1, (artist, name, got)


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    a = run_split(tmp_path / "a", make_rows(SIZES), seed=1)
    b = run_split(tmp_path / "b", make_rows(SIZES), seed=1)
    c = run_split(tmp_path / "c", make_rows(SIZES), seed=2)
    assert [r["split"] for r in a] == [r["split"] for r in b]
    assert [r["split"] for r in a] != [r["split"] for r in c]


def test_two_way_split_warns_that_the_score_is_optimistic(tmp_path, capsys):
    rows = run_split(tmp_path, make_rows(SIZES), ratios=(0.8, 0.2))
    assert {r["split"] for r in rows if r["keep"]} == {"train", "val"}
    assert "optimistic" in capsys.readouterr().err


def test_artist_too_small_for_the_ratios_is_named(tmp_path):
    manifest.write_manifest(tmp_path, make_rows({"A": 10, "Tiny": 2}))
    with pytest.raises(ArtclfError, match="artist 'Tiny' has 2 kept image"):
        split(SplitConfig(work=tmp_path))


def test_a_leaky_split_is_refused():
    rows = [{"group": 1, "split": "train"}, {"group": 1, "split": "test"}, {"group": 2, "split": "val"}]
    with pytest.raises(ArtclfError, match="leaky split refused"):
        check_no_leak(rows)


def test_quotas_are_largest_remainder_with_one_each():
    assert quotas(4, RATIOS) == [2, 1, 1]
    assert quotas(24, RATIOS) == [19, 3, 2] or quotas(24, RATIOS) == [19, 2, 3]
    for n in range(3, 300):
        q = quotas(n, RATIOS)
        assert sum(q) == n and min(q) >= 1
        if n * min(RATIOS) >= 1:
            assert all(abs(c - r * n) <= 1 for c, r in zip(q, RATIOS, strict=True)), (n, q)
