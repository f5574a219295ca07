"""What every file of the sample set is, decided before any is drawn: names, odd files, copies,
look-alikes, and the truth file that lists them (format: ``artclf.sample_data.stage``).

Every decision comes from the ``PLAN`` RNG stream, so one seed gives one plan whatever the number
of workers that paint it. It answers with jobs (``paintings.Job``: one painting and the files
made from it); ``stage`` paints and writes them.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from artclf.artists import ARTISTS
from artclf.sample_data import lookalikes
from artclf.sample_data.config import SampleDataConfig
from artclf.sample_data.paintings import PLAN, UNSEEN, Job, rng_for

IMAGES = "images/images"
DURER = [a.name for a in ARTISTS].index("Albrecht Dürer")
DURER_NFD = unicodedata.normalize("NFD", "Albrecht_Dürer")
DURER_MOJIBAKE = DURER_NFD.encode("utf-8").decode("cp437")  # how a cp437 unzip shows it: Albrecht_Du╠êrer
COPY_KINDS = ("resize_reencode", "color_cast", "grayscale", "flip", "crop")
COPY_P = (0.25, 0.25, 0.15, 0.10, 0.25)
ODD_KINDS = ("grayscale", "cmyk", "exif_rotated", "png_as_jpg", "truncated", "zero_bytes", "not_an_image")
UNUSABLE = ("truncated", "zero_bytes", "not_an_image")
UNSEEN_TYPICAL, UNSEEN_MIN = 120, 8  # paintings per unseen artist: a mid-sized class at --scale 1


def plan(cfg: SampleDataConfig) -> tuple[list[Job], list[tuple[str, str, int]], dict]:
    """Decide every file before drawing any: names, odd files, copies -> (jobs, extra files, truth)."""
    rng = rng_for(cfg.seed, PLAN)
    counts = [max(4, round(a.paintings * cfg.scale)) for a in ARTISTS]
    folders = [f"{IMAGES}/{a.folder}" for a in ARTISTS]
    odd: list[list[str]] = [[] for _ in ARTISTS]
    others = [i for i in range(len(ARTISTS)) if i != DURER]
    if cfg.quirks:
        folders[DURER] = f"{IMAGES}/{DURER_NFD}"
        odd[DURER] = ["grayscale"] * min(2, counts[DURER] - 2)  # Dürer's engravings are grayscale
        hosts = rng.choice(others, len(ODD_KINDS), replace=False).tolist()
        for i, kind in zip(hosts, ODD_KINDS, strict=True):
            odd[i].append(kind)
    # Cross-artist duplicates (the real set's possible mislabels): (source artist, target artist).
    pairs = rng.choice(others, (int(rng.integers(1, 4)), 2), replace=False).tolist()
    outputs: dict[tuple[int, int], list[tuple[str, str, int]]] = {}
    extras, spare, incoming = [], {}, {}
    for i in range(len(ARTISTS)):
        slots = _slots(
            counts[i],
            odd[i],
            [t for _, t in pairs].count(i),
            [s for s, _ in pairs].count(i),
            ARTISTS[i].paintings,
            rng,
        )
        name = folders[i].rsplit("/", 1)[1]
        paths = [f"{folders[i]}/{name}_{j + 1}.jpg" for j in range(len(slots))]
        if "not_an_image" in odd[i]:
            extras.append((f"{folders[i]}/Thumbs.db", "not_an_image", i))
        for j, kind in enumerate(slots):
            if kind == "zero_bytes":
                extras.append((paths[j], kind, i))
            elif kind not in ("copy", "xcopy"):
                outputs[(i, j + 1)] = [(paths[j], kind, i)]
        plain = [j + 1 for j, kind in enumerate(slots) if kind == "original"]
        rng.shuffle(plain)
        copies = [paths[j] for j, kind in enumerate(slots) if kind == "copy"]
        while copies:  # groups of 2, now and then 3
            take = 2 if len(copies) >= 2 and rng.random() < 0.25 else 1
            outputs[(i, plain.pop())] += [(p, _copy_kind(rng), i) for p in copies[:take]]
            copies = copies[take:]
        spare[i] = plain
        incoming[i] = [paths[j] for j, kind in enumerate(slots) if kind == "xcopy"]
    for s, t in pairs:
        outputs[(s, spare[s].pop())].append((incoming[t].pop(), _copy_kind(rng), t))
    jobs = [Job(i, n, tuple(o)) for (i, n), o in sorted(outputs.items())]
    hard: list[dict] = []
    if cfg.hard_negatives:
        jobs, hard = lookalikes.apply(jobs, rng_for(cfg.seed, PLAN, 1))
    return jobs, extras, {**_truth(cfg, counts, folders, jobs, extras), "hard_negatives": hard}


def unseen_jobs(cfg: SampleDataConfig, truth: dict) -> list[Job]:
    """Paintings of the unseen artists (style index 50 + i), plain JPEGs in ``unseen/<Folder>/``;
    fills ``truth["unseen"]`` (name -> folder)."""
    jobs = []
    n = max(UNSEEN_MIN, round(UNSEEN_TYPICAL * cfg.scale))
    for i, name in enumerate(UNSEEN[: cfg.unseen]):
        folder = name.replace(" ", "_").replace("'", "")
        truth["unseen"][name] = f"unseen/{folder}"
        a = len(ARTISTS) + i
        jobs += [Job(a, j, ((f"unseen/{folder}/{folder}_{j}.jpg", "original", a),)) for j in range(1, n + 1)]
    return jobs


def _copy_kind(rng: np.random.Generator) -> str:
    return str(rng.choice(COPY_KINDS, p=COPY_P))


def _slots(n: int, odd: list[str], n_in: int, n_out: int, real: int, rng: np.random.Generator) -> list[str]:
    """What each numbered file of one artist is, in file order: original, copy, xcopy or an odd kind."""
    odd_jpg = [k for k in odd if k != "not_an_image"]  # the stray file has no number but counts
    free = n - len(odd) - n_in
    # Copies sit mostly in the big classes: ~11 % of the files at the top, in proportion below 450.
    rate = 0.11 * min(1.0, real / 450)
    k = min(int(rate * n + rng.random()), max(0, (free - n_out - 1) // 2))  # leave originals for all groups
    slots = odd_jpg + ["xcopy"] * n_in + ["copy"] * k + ["original"] * (free - k)
    return [slots[j] for j in rng.permutation(len(slots))]


def _truth(
    cfg: SampleDataConfig,
    counts: list[int],
    folders: list[str],
    jobs: list[Job],
    extras: list[tuple[str, str, int]],
) -> dict:
    names = [a.name for a in ARTISTS]
    files = [o for j in jobs for o in j.outputs[:1]] + extras
    odd = sorted((p, k, i) for p, k, i in files if k in ODD_KINDS)
    groups = [
        {
            "cross_artist": len({i for _, _, i in j.outputs}) > 1,
            "members": [
                {"path": p, "artist": names[i], "kind": "original" if m == 0 else k}
                for m, (p, k, i) in enumerate(j.outputs)
            ],
        }
        for j in jobs
        if len(j.outputs) > 1
    ]
    return {
        "seed": cfg.seed,
        "scale": cfg.scale,
        "max_side": cfg.max_side,
        "sizes": cfg.sizes,
        "quirks": cfg.quirks,
        "counts": dict(zip(names, counts, strict=True)),
        "folders": dict(zip(names, folders, strict=True)),
        "duplicate_groups": groups,
        "unseen": {},  # name -> folder of each unseen artist (sample-data --unseen)
        "odd_files": [
            {"path": p, "artist": names[i], "kind": k, "usable": k not in UNUSABLE} for p, k, i in odd
        ],
        "duplicate_folder": (
            {"path": f"{IMAGES}/{DURER_MOJIBAKE}", "copy_of": folders[DURER], "files": counts[DURER]}
            if cfg.quirks
            else None
        ),
    }
