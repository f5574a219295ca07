"""Hard negatives for dedup: different paintings that look alike (``sample-data --hard-negatives``).

Dedup must tell the same painting photographed twice from two works that merely look alike. The
real set has three kinds of look-alike, and the sample set plants each with its truth:

- ``template``: a family of 2-4 paintings by one artist from one template: the same size, ground,
  palette and large shapes, each with its own strokes and grain (a painter's series of one motif).
- ``dark``: sparse paintings, a few thin lines on a near-black ground, spread over the artists
  (little texture: few keypoints, alike as thumbnails and as CNN embeddings).
- ``grid``: black bars on white with a few primary-colour cells, in the manner of Mondrian: every
  painting in Piet Mondrian's folder.

No two members of one set are the same work, so every pair across two of them (their copies
included) is a pair dedup must not merge. ``apply`` picks them among sample-data's paintings
(``plan``); ``paint_job`` paints them.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from artclf.artists import ARTISTS
from artclf.sample_data.paintings import HAND, Job, Style, add_grain, image_size, paint, rng_for

LOOKS = ("template", "dark", "grid")
GRID_ARTIST = "Piet Mondrian"
DARK_SHARE, FAMILY_SHARE, FAMILY_MIN = 0.015, 0.08, 12  # of each artist's paintings; families need 12+
_PRIMARIES = ((200, 30, 30), (30, 50, 160), (235, 200, 40), (20, 20, 20))


def apply(jobs: list[Job], rng: np.random.Generator) -> tuple[list[Job], list[dict]]:
    """Turn some plain paintings among sample-data's jobs into look-alikes (their copies follow)
    -> (jobs, truth sets: ``{"kind", "members": [original path of each work]}``)."""
    numbers: dict[int, list[int]] = {}
    for j in jobs:
        if j.outputs[0][1] == "original":
            numbers.setdefault(j.artist, []).append(j.number)
    grid_artist = [a.name for a in ARTISTS].index(GRID_ARTIST)
    picked = plan(numbers, grid_artist, rng)
    look = picked["look"]
    jobs = [
        replace(j, look=look[j.artist, j.number][0], template=look[j.artist, j.number][1])
        if (j.artist, j.number) in look
        else j
        for j in jobs
    ]
    path = {(j.artist, j.number): j.outputs[0][0] for j in jobs}
    return jobs, [{"kind": k, "members": [path[p] for p in ms]} for k, ms in picked["sets"]]


def plan(numbers: dict[int, list[int]], grid_artist: int, rng: np.random.Generator) -> dict:
    """Pick the look-alikes among each artist's painting numbers -> {(artist, number): (look,
    template number)} plus ``sets``: the truth, lists of (artist, number) no two of which are one work."""
    look: dict[tuple[int, int], tuple[str, int]] = {}
    grids, dark, families = [], [], []
    for a, nums in sorted(numbers.items()):
        nums = sorted(nums)
        if a == grid_artist:
            grids = [(a, n) for n in nums]
            continue
        order = [nums[j] for j in rng.permutation(len(nums))]
        k = int(DARK_SHARE * len(nums) + rng.random())
        dark += [(a, n) for n in order[:k]]
        rest = order[k:]
        if len(nums) >= FAMILY_MIN:
            budget = int(FAMILY_SHARE * len(nums) + rng.random())
            while budget >= 2 and len(rest) >= 2:
                size = min(int(rng.integers(2, 5)), budget, len(rest))
                fam, rest, budget = sorted(rest[:size]), rest[size:], budget - size
                families.append([(a, n) for n in fam])
    look.update({p: ("grid", 0) for p in grids})
    look.update({p: ("dark", 0) for p in dark})
    for fam in families:
        look.update({p: ("template", fam[0][1]) for p in fam})
    sets = [("grid", grids), ("dark", sorted(dark))] + [("template", f) for f in families]
    return {"look": look, "sets": [(kind, members) for kind, members in sets if len(members) > 1]}


def paint_job(style: Style, job: Job, seed: int, max_side: int, sizes: str) -> Image.Image:
    """The look-alike painting of ``job`` (``job.look`` set by :func:`apply`)."""
    hand = rng_for(seed, HAND, job.artist, job.number)
    if job.look == "template":  # the template's stream gives size, ground, palette, shapes; the hand the rest
        trng = rng_for(seed, HAND, job.artist, job.template, 1)
        return paint(style, image_size(trng, max_side, sizes), trng, hand)
    size = image_size(hand, max_side, sizes)
    return dark(style, size, hand) if job.look == "dark" else grid(size, hand)


def dark(style: Style, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A few thin lines and arcs in dim colours of the artist's hue on a near-black ground."""
    w, h = size
    s = min(w, h)
    hue = style.palette[0][0]
    ground = _rgb(hue, 0.4, rng.uniform(0.02, 0.08))
    img = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 11))):
        col = _rgb((hue + rng.normal(0, 0.05)) % 1, rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.55))
        width = max(1, round(s * rng.uniform(0.002, 0.006)))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.6:
            t, r = rng.uniform(0, math.pi), s * rng.uniform(0.1, 0.6)
            draw.line([x0, y0, x0 + r * math.cos(t), y0 + r * math.sin(t)], fill=col, width=width)
        else:
            r = s * rng.uniform(0.05, 0.3)
            a0 = float(rng.uniform(0, 360))
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], a0, a0 + float(rng.uniform(40, 200)), col, width)
    img = img.filter(ImageFilter.GaussianBlur(max(0.5, s * 0.0015)))
    return add_grain(img, 2, rng.uniform(1.0, 3.0), rng)


def grid(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Black bars on an off-white ground; a few cells filled with red, blue, yellow or black."""
    w, h = size
    s = min(w, h)
    img = Image.new("RGB", size, tuple(int(v) for v in 240 + rng.normal(0, 5, 3).clip(-10, 10)))
    draw = ImageDraw.Draw(img)
    xs = np.sort(rng.uniform(0.05, 0.95, int(rng.integers(2, 6)))) * w
    ys = np.sort(rng.uniform(0.05, 0.95, int(rng.integers(2, 5)))) * h
    cx, cy = np.concatenate([[0], xs, [w]]), np.concatenate([[0], ys, [h]])
    for _ in range(int(rng.integers(2, 6))):
        i, j = int(rng.integers(len(cx) - 1)), int(rng.integers(len(cy) - 1))
        col = _PRIMARIES[int(rng.integers(len(_PRIMARIES)))]
        draw.rectangle([cx[i], cy[j], cx[i + 1], cy[j + 1]], fill=col)
    bar = max(2, round(s * rng.uniform(0.012, 0.025)))
    for x in xs:
        draw.rectangle([x - bar / 2, 0, x + bar / 2, h], fill=(15, 15, 15))
    for y in ys:
        draw.rectangle([0, y - bar / 2, w, y + bar / 2], fill=(15, 15, 15))
    return add_grain(img, 1, rng.uniform(2.0, 5.0), rng)


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))
