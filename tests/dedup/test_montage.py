"""Montage drawing: a title longer than the sheet wraps inside it, every word kept."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from artclf.dedup import montage

LONG = (
    "group 0: 2 images, Andy Warhol, Pablo Picasso  POSSIBLE MISLABEL: one painting filed under "
    "2 artists; nobody knows which label is right, so all 2 images were dropped"
)


def _tiles(n: int) -> list[tuple[Image.Image, str, str]]:
    return [(Image.new("RGB", (120, 90), "white"), f"tile_{i}.jpg", "hash 0.906 with #1") for i in range(n)]


def test_a_long_title_wraps_inside_the_sheet():
    im = montage.sheet(_tiles(2), LONG)
    ink = np.asarray(im.convert("L")) < 160
    edge = np.nonzero(ink[:, -8:].any(axis=1))[0]
    assert not len(edge), f"text cut at the right edge of a {im.width} px sheet, rows {edge[:3]}…"
    # the wrapped lines, measured with the font the sheet draws with, fit and keep every word
    font = montage.title_font()
    width = im.width - 2 * montage.MARGIN
    lines = montage.wrap(LONG, font, width)
    assert len(lines) > 1
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for line in lines:
        left, _, right, _ = draw.textbbox((0, 0), line, font=font)
        assert right - left <= width, (line, right - left, width)
    assert " ".join(lines) == " ".join(LONG.split())


def test_a_word_wider_than_the_sheet_is_broken_not_lost():
    font = montage.title_font()
    word = "x" * 200
    lines = montage.wrap(f"a {word} b", font, 150)
    assert "".join(lines).replace(" ", "") == f"a{word}b"
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert all(draw.textlength(line, font=font) <= 150 for line in lines)


def test_artist_names_are_drawn_with_their_letters():
    """Kaggle's "Albrecht Dürer": the ü must be a letter, not the box of a missing glyph
    (U+0378 is unassigned, so every font draws it as that box)."""
    for font in (montage.title_font(), montage.caption_font()):
        missing = bytes(font.getmask("\u0378"))
        drawn = [c for c in "Dürer" if bytes(font.getmask(c)) == missing]
        assert not drawn, f"{font.getname()} has no glyph for {drawn}"
