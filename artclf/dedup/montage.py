"""Contact sheets of duplicate groups: each member with its file name and the pair that tied it in.

Each tile says why its image is in the group: "kept" for the image the group keeps, else the
pair a detector found between it and another member (``#n``), with that pair's score: never a
score against an image it was not compared with. Titles wrap to the sheet, so a long list of
artists or the mislabel note is read whole.
"""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from artclf.atomic import atomic_open
from artclf.images import open_rgb

THUMB = 200  # px, longer side of each tile's picture
CAPTION = 34  # px below each picture
MARGIN = 10  # px around the sheet and between tiles
MAX_TILES = 12
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@functools.cache
def _font(size: int) -> Font:
    """DejaVu Sans, which matplotlib (a dependency) ships: Pillow's built-in font has no ü for
    "Albrecht Dürer" and draws a box."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def title_font() -> Font:
    return _font(16)


def caption_font() -> Font:
    return _font(11)


def _width(text: str, font: Font) -> float:
    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)


def wrap(text: str, font: Font, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` px in ``font``, broken between words; a word
    wider than a line is broken inside (so nothing is cut off, whatever the text)."""
    lines, line = [], ""
    for word in text.split():
        while _width(word, font) > width:  # break inside: the longest head that fits
            if line:
                lines.append(line)
                line = ""
            n = 1
            while n < len(word) and _width(word[: n + 1], font) <= width:
                n += 1
            lines.append(word[:n])
            word = word[n:]
        candidate = f"{line} {word}" if line else word
        if line and _width(candidate, font) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return [*lines, line] if line else lines


def fit(text: str, font: Font, width: float, keep_end: bool = False) -> str:
    """``text`` shortened with "…" until it fits ``width`` px; ``keep_end`` cuts from the left,
    for file names, whose end tells them apart (``Pablo_Picasso_13.jpg``)."""
    if _width(text, font) <= width:
        return text
    while text and _width(text + "…", font) > width:
        text = text[1:] if keep_end else text[:-1]
    return "…" + text if keep_end else text + "…"


def _line_height(font: Font) -> int:
    left, top, right, bottom = font.getbbox("Ágy")
    return bottom - top + 4


def sheet(
    tiles: list[tuple[Image.Image, str, str]], title: str, note: str = "", columns: int = 4
) -> Image.Image:
    """A grid of (image, line 1, line 2) tiles under ``title`` (black) and ``note`` (red), both
    wrapped to the sheet's width; caption lines are cut to a tile's width."""
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    w = cols * (THUMB + MARGIN) + MARGIN
    big, small = title_font(), caption_font()
    head = [(line, "black") for line in wrap(title, big, w - 2 * MARGIN)]
    head += [(line, "#b00000") for line in wrap(note, big, w - 2 * MARGIN)]
    top = MARGIN + len(head) * _line_height(big) + MARGIN
    canvas = Image.new("RGB", (w, top + rows * (THUMB + CAPTION + MARGIN)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (line, colour) in enumerate(head):
        draw.text((MARGIN, MARGIN + i * _line_height(big)), line, fill=colour, font=big)
    for n, (im, line1, line2) in enumerate(tiles):
        x, y = MARGIN + (n % cols) * (THUMB + MARGIN), top + (n // cols) * (THUMB + CAPTION + MARGIN)
        im = im.copy()
        im.thumbnail((THUMB, THUMB))
        canvas.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
        draw.text((x, y + THUMB + 3), fit(line1, small, THUMB), fill="black", font=small)
        draw.text((x, y + THUMB + 18), fit(line2, small, THUMB), fill="#444444", font=small)
    return canvas


def file_name(group: int) -> str:
    return f"group_{group}.png"


def titles(g: dict) -> tuple[str, str]:
    """(title, note) of group ``g``: what it holds and what dedup did with it. Members come
    kept (or largest) first, so ``#1`` is the one kept."""
    size, artists = g["size"], ", ".join(g["artists"])
    more = f" (first {MAX_TILES} shown)" if size > MAX_TILES else ""
    if not g["mislabel"]:
        kept = f"#1 kept (the largest), {size - 1} dropped"
        return f"group {g['group']}: {size} images of {artists}{more}; {kept}", ""
    title = f"group {g['group']}: {size} images{more}, {artists}"
    head = f"POSSIBLE MISLABEL: one painting filed under {len(g['artists'])} artists ({artists}); "
    if g["kept"] is None:
        return title, (
            f"{head}nobody knows which label is right, so all {size} images were dropped "
            "(--keep-mislabeled keeps the largest)"
        )
    artist = g["members"][0]["artist"]
    return title, f"{head}--keep-mislabeled kept #1 as {artist}, which may be wrong; {size - 1} dropped"


def caption(g: dict, n: int) -> tuple[str, str]:
    """The two caption lines of member ``n`` of group ``g``: its name, then why it is there."""
    r, why = g["members"][n], g["why"][n]
    mark = f"#{n + 1} KEPT " if r["keep"] else f"#{n + 1} "
    name = fit(r["path"].rsplit("/", 1)[-1], caption_font(), THUMB - _width(mark, caption_font()), True)
    size = f"{r['width']}x{r['height']}"
    if r["keep"]:
        return mark + name, f"kept: the largest  {size}"
    if why["by"] == "exact":
        return mark + name, f"exact copy of #{why['with'] + 1}  {size}"
    return mark + name, f"{why['by']} {why['similarity']:.3f} with #{why['with'] + 1}  {size}"


def write_montages(groups: list[dict], data_dir: Path, out: Path) -> list[Path]:
    """``out/group_<id>.png`` for each group of ``groups`` (dicts from ``artclf.dedup.stage.assign``
    with ``why`` from ``artclf.dedup.groups.explain``); the title, note and captions also go into
    the PNG's text (``Title``, ``Description``) for whoever reads them by program."""
    paths = []
    for g in groups:
        shown = range(min(MAX_TILES, len(g["members"])))
        captions = [caption(g, n) for n in shown]
        tiles = [(open_rgb(data_dir / g["members"][n]["path"], min_side=THUMB), *captions[n]) for n in shown]
        title, note = titles(g)
        info = PngInfo()
        info.add_text("Title", f"{title}\n{note}".strip())
        info.add_text("Description", "\n".join(f"{a} | {b}" for a, b in captions))
        path = out / file_name(g["group"])
        with atomic_open(path, "wb") as f:
            sheet(tiles, title, note).save(f, format="PNG", pnginfo=info)
        paths.append(path)
    return paths
