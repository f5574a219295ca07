"""Procedural paintings for ``artclf sample-data``: one style per artist, many paintings per style.

A style fixes a palette, a stroke kind, size and direction, a layout, grain and softness;
each painting varies its layout, shapes, colours and where the strokes bunch, so a small CNN
can learn the 50 artists while no two paintings are alike. ``copy_of`` makes the set's
near-duplicates: the same painting photographed again.
A ``Job`` is one painting and the files made from it, as the plan decides them.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from artclf.artists import ARTISTS

# RNG stream tags: every random draw comes from SeedSequence([seed, tag, artist, number, k]).
STYLE, PAINT, COPY, PLAN, JUNK, HAND = range(6)  # HAND: a look-alike's own strokes (lookalikes.py)

# stroke kind -> (count, size) factors: many small dots, few big circles
STROKES = {"lines": (1, 0.5), "dabs": (1.2, 1), "rects": (0.6, 1.3), "circles": (0.5, 1.2), "dots": (3, 0.3)}
LAYOUTS = ("horizon", "blob", "grid", "diagonal")
TONES = (0.2, 0.55, 0.9)  # background brightness: dark, mid, light


@dataclass(frozen=True)
class Style:
    palette: tuple[tuple[float, float, float], ...]  # HSV: two background colours, then strokes
    stroke: str  # key of STROKES
    layout: str  # one of LAYOUTS
    anchor: float  # horizon height / blob size / grid cells / diagonal position, 0..1
    angle: float  # dominant stroke direction, radians
    spread: float  # std of the stroke direction, radians
    size: float  # stroke size, fraction of the shorter side
    density: int  # strokes per image
    grain: float  # noise std, grey levels
    grain_px: int  # noise cell at 384 px (scales with the image)
    blur: float  # box blur radius, fraction of the shorter side (0 = crisp)


@dataclass(frozen=True)
class Job:
    """One painting and every file made from it: outputs[0] is the painting, the rest are copies."""

    artist: int
    number: int
    outputs: tuple[tuple[str, str, int], ...]  # (path relative to DIR, kind, artist)
    look: str = ""  # a look-alike kind (lookalikes.LOOKS), or "" for the artist's own style
    template: int = 0  # the painting number whose template a "template" look-alike shares


def rng_for(seed: int, tag: int, artist: int = 0, number: int = 0, k: int = 0) -> np.random.Generator:
    """Independent stream per (purpose, artist, painting, copy): output does not depend on worker count."""
    return np.random.default_rng([seed, tag, artist, number, k])


# Painters outside Kaggle's 50, for open-set tests: ``sample-data --unseen N`` paints the first N
# in the stroke x layout x tone combinations no known artist uses.
UNSEEN = (
    "Katsushika Hokusai",
    "Mary Cassatt",
    "Giuseppe Arcimboldo",
    "Johannes Vermeer",
    "Egon Schiele",
    "Artemisia Gentileschi",
    "Edward Hopper",
    "Georgia O'Keeffe",
    "Hilma af Klint",
    "Utagawa Hiroshige",
)


def _style_plan(seed: int) -> tuple[list[tuple[str, str, float]], np.ndarray, np.ndarray]:
    """Every stroke x layout x tone combination, their order (the known artists take the first
    50, unseen ones the rest) and the known artists' evenly spread hues."""
    rng = rng_for(seed, STYLE)
    combos = [(s, la, t) for s in STROKES for la in LAYOUTS for t in TONES]
    order = rng.permutation(len(combos))
    hues = ((np.arange(len(ARTISTS)) / len(ARTISTS) + rng.random()) % 1.0)[rng.permutation(len(ARTISTS))]
    return combos, order, hues


def make_styles(seed: int) -> list[Style]:
    """One style per artist. Stroke kind x layout x tone is a distinct combination for every artist and
    hues are spread evenly, so any two artists differ on several axes at once."""
    combos, order, hues = _style_plan(seed)
    return [_style(seed, a.name, combos[order[i]], float(hues[i])) for i, a in enumerate(ARTISTS)]


def unseen_styles(seed: int, n: int) -> list[Style]:
    """Styles of the first ``n`` of :data:`UNSEEN`: combinations no known artist has, any hue."""
    if not 0 <= n <= len(UNSEEN):
        raise ValueError(f"at most {len(UNSEEN)} unseen artists, got {n}")
    combos, order, _ = _style_plan(seed)
    hue = [float(rng_for(seed, STYLE, zlib.crc32(name.encode()), 2).random()) for name in UNSEEN[:n]]
    return [_style(seed, name, combos[order[len(ARTISTS) + i]], hue[i]) for i, name in enumerate(UNSEEN[:n])]


def _style(seed: int, name: str, combo: tuple[str, str, float], hue: float) -> Style:
    r = rng_for(seed, STYLE, zlib.crc32(name.encode()), 1)
    stroke, layout, tone = combo
    count_f, size_f = STROKES[stroke]
    return Style(
        palette=_palette(hue, tone, r),
        stroke=stroke,
        layout=layout,
        anchor=float(r.uniform(0.25, 0.75)),
        angle=float(r.uniform(0, math.pi)),
        spread=float(r.choice([0.08, 0.3, 1.5])),
        size=float(r.uniform(0.015, 0.05) * size_f),
        density=int(r.uniform(100, 280) * count_f),
        grain=float(r.choice([2.0, 6.0, 12.0])),
        grain_px=int(r.choice([1, 2, 4])),
        blur=float(r.choice([0.0, 0.0, 0.004, 0.01])),
    )


def _palette(hue: float, tone: float, rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    offsets = ((0.0, 0.06, -0.06), (0.0, 0.5, 0.45), (0.0, 0.33, 0.67), (0.04, 0.5, -0.1))[rng.integers(4)]
    sat = rng.uniform(0.45, 0.95)
    # Strokes contrast with the background: light on dark, dark on light, either on mid.
    lo, hi = (0.6, 1.0) if tone < 0.4 else (0.1, 0.5) if tone > 0.7 else (0.1, 1.0)
    tone_b = float(np.clip(tone + rng.choice([-0.15, 0.15]), 0.05, 1.0))
    hsv = [(hue, sat * 0.6, tone), ((hue + offsets[1]) % 1, sat * 0.5, tone_b)]
    return tuple(hsv + [((hue + o) % 1, sat, float(rng.uniform(lo, hi))) for o in offsets])


def _colours(style: Style, rng: np.random.Generator) -> np.ndarray:
    """The artist's palette as this painting uses it: hue, saturation and light shifted a little."""
    hsv = np.array(style.palette) + [rng.normal(0, 0.012), 0, rng.normal(0, 0.06)]  # hues lie 0.02 apart
    hsv[:, 1] *= rng.uniform(0.7, 1.2)
    return np.array([colorsys.hsv_to_rgb(h % 1, min(s, 1), np.clip(v, 0, 1)) for h, s, v in hsv]) * 255


SIZES = ("capped", "kaggle")


def image_size(rng: np.random.Generator, max_side: int, sizes: str = "capped") -> tuple[int, int]:
    """(width, height), aspect 0.6-1.6. ``capped``: longer side 0.6-1 × ``max_side``, or with
    ``max_side`` 0 mostly 0.3-1.2 MP, now and then up to 3 MP. ``kaggle``: the Kaggle originals
    (2.29 GiB for 8,446 JPEGs): median 1.5 MP, two in three of 1-3 MP, 2 % of 10-14 MP."""
    ar = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    if sizes == "kaggle":
        mp = np.clip(rng.lognormal(math.log(1.5), 0.55), 0.15, 9.0)
        if rng.random() < 0.02:
            mp = rng.uniform(10.0, 14.0)
        w = math.sqrt(mp * 1e6 * ar)
        h = w / ar
    elif max_side:
        long = rng.uniform(0.6, 1.0) * max_side
        w, h = (long, long / ar) if ar >= 1 else (long * ar, long)
    else:
        mp = np.clip(rng.lognormal(math.log(0.62), 0.33), 0.25, 1.2)
        if rng.random() < 0.03:
            mp = rng.uniform(1.2, 3.0)
        w = math.sqrt(mp * 1e6 * ar)
        h = w / ar
    return max(16, round(w)), max(16, round(h))


def paint(
    style: Style, size: tuple[int, int], rng: np.random.Generator, hand: np.random.Generator | None = None
) -> Image.Image:
    """One painting in ``style``: layout, a few large shapes (its subject), strokes, softness, grain.

    What marks the artist (stroke kind, palette family, direction, grain) stays; what a painting is
    of (composition, subject, which colours dominate, stroke size and density) changes, so that two
    paintings of one artist are no closer than real ones are and only real copies look alike.
    ``hand``: a second stream for the strokes and the grain only; paintings that share ``rng``'s
    seed but not ``hand``'s share a composition and are different works (``lookalikes``).
    """
    hand = rng if hand is None else hand
    w, h = size
    s = min(w, h)
    pal = _colours(style, rng)
    bg = pal[:2] if rng.random() < 0.7 else pal[rng.permutation(len(pal))[:2]]
    layout = style.layout if rng.random() < 0.6 else LAYOUTS[rng.integers(len(LAYOUTS))]
    img = _background(layout, style.anchor, bg, w, h, rng)
    draw = ImageDraw.Draw(img)
    n_shapes = int(rng.integers(1, 6))
    under = int(rng.integers(0, n_shapes + 1))
    _shapes(draw, pal, under, w, h, rng)  # the subject: some shapes under the strokes ...
    _strokes(draw, style, pal[2:], w, h, hand)
    _shapes(draw, pal, n_shapes - under, w, h, rng)  # ... and some over them, leaving calm areas
    if style.blur:
        img = img.filter(ImageFilter.BoxBlur(max(1, round(style.blur * s))))
    return add_grain(img, style.grain_px, style.grain * hand.uniform(0.4, 1.2), hand)


def add_grain(img: Image.Image, grain_px: int, std: float, rng: np.random.Generator) -> Image.Image:
    """Canvas grain: noise of ``std`` grey levels in cells of ``grain_px`` at 384 px, added in C."""
    w, h = img.size
    cell = max(1, round(grain_px * min(w, h) / 384))
    noise = np.clip(128 + rng.normal(0, std, (h // cell + 1, w // cell + 1)), 0, 255).astype(np.uint8)
    noise_img = Image.fromarray(noise).resize((w, h), Image.Resampling.BILINEAR).convert("RGB")
    return ImageChops.add(img, noise_img, 1.0, -128)


def _shapes(
    draw: ImageDraw.ImageDraw, pal: np.ndarray, n: int, w: int, h: int, rng: np.random.Generator
) -> None:
    """Large ellipses and pentagons in the palette's colours: what the painting is of."""
    for _ in range(n):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), min(w, h) * rng.uniform(0.1, 0.4)
        col = tuple(np.clip(pal[rng.integers(len(pal))] + rng.normal(0, 20, 3), 0, 255).astype(int).tolist())
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * 1.4, cx + r, cy + r * 1.4], fill=col)
        else:
            radii, turn = rng.uniform(0.4, 1.0, 5) * r, rng.uniform(0, 2 * math.pi)
            draw.polygon(
                [
                    (cx + q * math.cos(turn + k * 1.2566), cy + q * math.sin(turn + k * 1.2566))
                    for k, q in enumerate(radii)
                ],
                fill=col,
            )


def _strokes(
    draw: ImageDraw.ImageDraw, style: Style, pal: np.ndarray, w: int, h: int, rng: np.random.Generator
) -> None:
    """The artist's hand: strokes of one kind and direction, bunched where this painting is busy."""
    n = int(style.density * rng.uniform(0.4, 1.6))
    centres = rng.random((int(rng.integers(1, 4)), 2))
    xy = centres[rng.integers(len(centres), size=n)] + rng.normal(0, 1, (n, 2)) * rng.uniform(0.1, 0.35)
    xy = np.where(rng.random((n, 1)) < 0.3, rng.random((n, 2)), xy)  # a third anywhere
    xs, ys = (xy[:, 0] * w).tolist(), (xy[:, 1] * h).tolist()
    rs = (style.size * min(w, h) * rng.lognormal(0, 0.35) * rng.lognormal(0, 0.3, n)).tolist()
    angles = (style.angle + rng.normal(0, 0.25) + rng.normal(0, style.spread, n)).tolist()
    weights = rng.dirichlet(np.ones(len(pal)))  # which colours dominate this painting
    cols = np.clip(pal[rng.choice(len(pal), n, p=weights)] + rng.normal(0, 12, (n, 3)), 0, 255).astype(int)
    for x, y, r, t, c in zip(xs, ys, rs, angles, map(tuple, cols.tolist()), strict=True):
        dx, dy = math.cos(t) * r, math.sin(t) * r
        if style.stroke == "lines":
            draw.line([x - 4 * dx, y - 4 * dy, x + 4 * dx, y + 4 * dy], fill=c, width=max(1, int(r / 3)))
        elif style.stroke == "dabs":
            draw.line([x - dx, y - dy, x + dx, y + dy], fill=c, width=max(1, int(r)))
        elif style.stroke == "rects":
            draw.polygon(
                [
                    (x + 1.2 * a * dx - 0.5 * b * dy, y + 1.2 * a * dy + 0.5 * b * dx)
                    for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
                ],
                fill=c,
            )
        else:  # circles and dots
            draw.ellipse([x - r, y - r, x + r, y + r], fill=c)


def _background(
    layout: str, anchor: float, pal: np.ndarray, w: int, h: int, rng: np.random.Generator
) -> Image.Image:
    a, b = (tuple(int(v) for v in np.clip(c + rng.normal(0, 6, 3), 0, 255)) for c in pal)
    if layout == "grid":  # tiles of the two colours, drawn small and scaled up
        n = int(rng.integers(2, 6) + 4 * anchor)
        tiles = np.where(rng.random((n, n, 1)) < 0.5, pal[0], pal[1]) + rng.normal(0, 10, (n, n, 3))
        tiles = np.clip(tiles, 0, 255).astype(np.uint8)
        return Image.fromarray(tiles).resize((w, h), Image.Resampling.NEAREST)
    img = Image.new("RGB", (w, h), a)
    draw = ImageDraw.Draw(img)
    t = float(np.clip(anchor + rng.normal(0, 0.1), 0.1, 0.9))
    if layout == "horizon":
        draw.rectangle([0, t * h, w, h], fill=b)
    elif layout == "blob":
        cx, cy, r = w * rng.normal(0.5, 0.1), h * rng.normal(0.5, 0.1), min(w, h) * (0.15 + 0.3 * t)
        draw.ellipse([cx - r * rng.uniform(0.8, 1.3), cy - r, cx + r * rng.uniform(0.8, 1.3), cy + r], fill=b)
    else:  # diagonal
        draw.polygon([(0, h), (w * 2 * t, h), (0, h * (2 * t - 1))], fill=b)
    return img


def copy_of(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """The painting "photographed again" by one transform chain -> (image, JPEG quality)."""
    w, h = img.size
    if kind == "resize_reencode":
        f = rng.uniform(0.6, 0.9)
        return img.resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC), int(rng.integers(60, 86))
    if kind == "color_cast":
        return _cast(img, rng, 0.10, 0.15), int(rng.integers(80, 96))
    if kind == "grayscale":  # stored as RGB: the mode-L files are the odd files
        return ImageOps.grayscale(img).convert("RGB"), int(rng.integers(80, 96))
    if kind == "flip":
        return ImageOps.mirror(img), int(rng.integers(80, 96))
    left, top, right, bottom = rng.uniform(0.03, 0.10, 4)  # crop: a re-photograph, framed and lit anew
    box = (round(left * w), round(top * h), round(w * (1 - right)), round(h * (1 - bottom)))
    out, f = _cast(img.crop(box), rng, 0.03, 0.06), rng.uniform(0.7, 1.2)
    size = (round(out.width * f), round(out.height * f))
    return out.resize(size, Image.Resampling.BICUBIC), int(rng.integers(70, 91))


def _cast(img: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """Per-channel gain of +-lo..hi, a gamma and a brightness shift, as one lookup table."""
    gains = 1 + rng.choice([-1, 1], 3) * rng.uniform(lo, hi, 3)
    gamma, lift = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06)
    x = np.arange(256) / 255.0
    lut = np.concatenate([np.clip(255 * ((x * g) ** gamma + lift), 0, 255) for g in gains])
    return img.point(lut.round().astype(int).tolist())
