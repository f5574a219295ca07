"""Contact sheets of duplicate groups: each member with its file name and similarity."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from artclf.atomic import atomic_open
from artclf.dedup.features import Features
from artclf.images import open_rgb

THUMB = 200  # px, longer side of each tile's picture
CAPTION = 34  # px below each picture
MAX_TILES = 12


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def sheet(tiles: list[tuple[Image.Image, str, str]], title: str, columns: int = 4) -> Image.Image:
    """A grid of (image, line 1, line 2) tiles under a title."""
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    w, h = cols * (THUMB + 10) + 10, rows * (THUMB + CAPTION + 10) + 40
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 10), title, fill="black", font=_font(16))
    small = _font(11)
    for n, (im, line1, line2) in enumerate(tiles):
        x, y = 10 + (n % cols) * (THUMB + 10), 40 + (n // cols) * (THUMB + CAPTION + 10)
        im = im.copy()
        im.thumbnail((THUMB, THUMB))
        canvas.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
        draw.text((x, y + THUMB + 3), line1, fill="black", font=small)
        draw.text((x, y + THUMB + 18), line2, fill="#444444", font=small)
    return canvas


def write_montages(groups: list[dict], data_dir: Path, out: Path, feats: Features) -> list[Path]:
    """``out/group_<id>.png`` for each group of ``groups`` (dicts from ``artclf.dedup.stage.assign``)."""
    paths = []
    for g in groups:
        kept = next((r for r in g["members"] if r["keep"]), g["members"][0])
        tiles = []
        for r in g["members"][:MAX_TILES]:
            sim, how = feats.similarity(kept["sha256"], r["sha256"])
            name = r["path"].rsplit("/", 1)[-1]
            mark = "KEPT " if r["keep"] else ""
            tiles.append(
                (
                    open_rgb(data_dir / r["path"], min_side=THUMB),
                    f"{mark}{name[:30]}",
                    f"{how} sim {sim:.3f}  {r['width']}x{r['height']}",
                )
            )
        more = f" (first {MAX_TILES} shown)" if g["size"] > MAX_TILES else ""
        flag = "  POSSIBLE MISLABEL" if g["mislabel"] else ""
        title = f"group {g['group']}: {g['size']} images{more}, {', '.join(g['artists'])}{flag}"
        path = out / f"group_{g['group']}.png"
        with atomic_open(path, "wb") as f:
            sheet(tiles, title).save(f, format="PNG")
        paths.append(path)
    return paths
