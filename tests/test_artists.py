"""Folder-name repair and label order against the real download's known folder names."""

from __future__ import annotations

import unicodedata

import pytest

from artclf.artists import ARTISTS, class_names, fold, repair_mojibake, repair_mojibake_rounds

DURER_NFD = unicodedata.normalize("NFD", "Albrecht_Dürer")


def _mojibake(s: str, codec: str) -> str:
    return s.encode("utf-8").decode(codec)


@pytest.mark.parametrize(
    "folder",
    [
        "Albrecht_Dürer",
        DURER_NFD,
        "Albrecht_Du╠êrer",  # as unzipped from the Kaggle archive
        "Albrecht_DuΓòá├¬rer",  # the same, mangled twice (cp437)
        "Albrecht_DuÔòá├¬rer",  # the same, mangled twice (cp850)
    ],
)
def test_every_known_durer_folder_folds_to_one_key(folder):
    assert fold(folder) == "Albrecht_Durer"


def test_the_mojibake_is_what_cp437_makes_of_the_nfd_name():
    assert _mojibake(DURER_NFD, "cp437") == "Albrecht_Du╠êrer"
    assert _mojibake(_mojibake(DURER_NFD, "cp437"), "cp437") == "Albrecht_DuΓòá├¬rer"
    assert repair_mojibake("Albrecht_DuΓòá├¬rer") == DURER_NFD


@pytest.mark.parametrize(
    "folder, rounds",
    [
        ("Albrecht_Dürer", 0),
        (DURER_NFD, 0),
        ("Albrecht_Du╠êrer", 1),
        ("Albrecht_DuΓòá├¬rer", 2),
        ("Albrecht_DuÔòá├¬rer", 2),
    ],
)
def test_repair_rounds_are_counted(folder, rounds):
    """ingest keeps the copy needing the fewest rounds; one and two rounds must differ."""
    assert repair_mojibake_rounds(folder) == (repair_mojibake(folder), rounds)


def test_clean_names_are_untouched():
    for a in ARTISTS:
        assert repair_mojibake(a.folder) == a.folder
        assert fold(a.name) == unicodedata.normalize("NFKD", a.folder).encode("ascii", "ignore").decode()


def test_label_order_is_sorted_ascii_folders_with_durer_first():
    names = class_names([a.name for a in ARTISTS])
    assert len(names) == 50 and names == sorted(names)
    assert names[0] == "Albrecht_Durer"
    assert sum(a.paintings for a in ARTISTS) == 8446
    assert (min(a.paintings for a in ARTISTS), max(a.paintings for a in ARTISTS)) == (24, 877)
