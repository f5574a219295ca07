"""`artclf sample-data DIR`: a synthetic data set in the Kaggle "Best Artworks of All Time" layout.

Writes ``DIR/artists.csv`` (the real 50 artists; ``paintings`` = files in the artist's folder) and
``DIR/images/images/<Artist_Name>/<Artist_Name>_<n>.jpg`` (n from 1), ``max(4, round(real * scale))``
files per artist. Every artist has a procedural style (palette, stroke kind, size and direction,
composition, grain, softness) so a small CNN can tell the 50 apart; every image varies within it.
Like the real download it holds near-duplicates (mostly in the big classes, a few filed under two
artists) and, unless ``--no-quirks``, its odd files: Dürer's folder with a decomposed umlaut plus a
byte-identical mojibake copy ``Albrecht_Du╠êrer``, grayscale, CMYK, EXIF-rotated, PNG-named-.jpg,
truncated and zero-byte files, and a stray ``Thumbs.db``. Same seed, same bytes, whatever ``--workers``.

``DIR/sample_truth.json`` lists what was planted (paths relative to DIR, forward slashes)::

    {"seed": 0, "scale": 0.05, "max_side": 384, "sizes": "capped", "quirks": true,
     "counts":  {artist name: files in its primary folder, copies and odd files included},
     "folders": {artist name: "images/images/<folder>"},
     "duplicate_groups": [{"cross_artist": bool,
                           "members": [{"path", "artist", "kind": "original" | "resize_reencode" |
                                        "color_cast" | "grayscale" | "flip" | "crop"}]}],
     "odd_files": [{"path", "artist", "kind": "grayscale" | "cmyk" | "exif_rotated" | "png_as_jpg" |
                    "truncated" | "zero_bytes" | "not_an_image", "usable": bool}],
     "duplicate_folder": {"path", "copy_of", "files"} | null,
     "unseen": {name: "unseen/<Folder>"},
     "hard_negatives": [{"kind": "template" | "dark" | "grid", "members": [original path, ...]}]}

With ``--hard-negatives`` some paintings are look-alikes (``artclf.sample_data.lookalikes``): the members of
one ``hard_negatives`` set are different works, so no file of one (original or copy) is a
duplicate of a file of another. Without it the list is empty and the files are as before.

With ``--unseen N`` it also paints N artists who are not among the 50 (``paintings.UNSEEN``:
Hokusai, Cassatt, Arcimboldo, …, in styles no known artist has) into ``DIR/unseen/<Folder>/``,
outside ``images/images`` so no stage trains on them: ``evaluate --unseen DIR/unseen`` measures
how well a model answers "none of these artists".

Each group has one ``original``; a ``cross_artist`` group is one painting filed under two artists (a
mislabel). Odd files lie in primary folders only; the duplicate folder repeats Dürer's files. No later
stage reads the truth file; tests and benchmarks do.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from artclf.artists import ARTISTS, CSV_COLUMNS, SAMPLE_TRUTH
from artclf.atomic import write_json
from artclf.config import stage_main
from artclf.errors import ArtclfError
from artclf.sample_data import lookalikes
from artclf.sample_data.config import SampleDataConfig
from artclf.sample_data.paintings import (
    COPY,
    JUNK,
    PAINT,
    Job,
    Style,
    copy_of,
    image_size,
    make_styles,
    paint,
    rng_for,
    unseen_styles,
)
from artclf.sample_data.plan import DURER_MOJIBAKE, DURER_NFD, plan, unseen_jobs


def _save(img: Image.Image, path: Path, kind: str, quality: int, rng: np.random.Generator) -> None:
    """Write ``img`` as ``kind``: a plain JPEG, or one of the odd files of the real set."""
    opts = {"quality": quality, "subsampling": 2, "optimize": False}  # fixed options: same bytes every run
    if kind == "grayscale":
        img.convert("L").save(path, "JPEG", **opts)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, "JPEG", **opts)
    elif kind == "exif_rotated":  # stored rotated; Orientation 6/8 tells exif_transpose how to turn it back
        tag = int(rng.choice([6, 8]))
        exif = Image.Exif()
        exif[0x0112] = tag
        img.transpose(Image.Transpose.ROTATE_90 if tag == 6 else Image.Transpose.ROTATE_270).save(
            path, "JPEG", exif=exif.tobytes(), **opts
        )
    elif kind == "png_as_jpg":
        img.save(path, "PNG", compress_level=6)
    elif kind == "truncated":
        buf = io.BytesIO()
        img.save(buf, "JPEG", **opts)
        path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.6)])
    else:
        img.save(path, "JPEG", **opts)


def make_files(root: str, seed: int, max_side: int, sizes: str, styles: Sequence[Style], job: Job) -> None:
    """Worker: paint one painting, write it and its copies (each from its own RNG stream)."""
    if job.look:
        img = lookalikes.paint_job(styles[job.artist], job, seed, max_side, sizes)
    else:
        rng = rng_for(seed, PAINT, job.artist, job.number)
        img = paint(styles[job.artist], image_size(rng, max_side, sizes), rng)
    for k, (rel, kind, _) in enumerate(job.outputs):
        crng = rng_for(seed, COPY, job.artist, job.number, k)
        if k == 0:
            _save(img, Path(root, rel), kind, int(crng.integers(85, 96)), crng)
        else:
            copy, quality = copy_of(img, kind, crng)
            _save(copy, Path(root, rel), "original", quality, crng)


def generate(cfg: SampleDataConfig) -> dict:
    """Write the data set into a temp folder beside ``cfg.out``, then rename it into place; -> truth."""
    start = time.perf_counter()
    _refuse_full(cfg.out)
    styles = make_styles(cfg.seed) + unseen_styles(cfg.seed, cfg.unseen)
    jobs, extras, truth = plan(cfg)
    jobs += unseen_jobs(cfg, truth)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.out.name}.", suffix=".tmp", dir=cfg.out.parent))
    try:
        tmp.chmod(0o755)
        for folder in [*truth["folders"].values(), *truth["unseen"].values()]:
            (tmp / folder).mkdir(parents=True)
        _run(partial(make_files, str(tmp), cfg.seed, cfg.max_side, cfg.sizes, styles), jobs, cfg.workers)
        for rel, kind, i in extras:  # a zero-byte .jpg, or junk behind an OLE header like a real Thumbs.db
            junk = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + rng_for(cfg.seed, JUNK, i).bytes(2048)
            (tmp / rel).write_bytes(b"" if kind == "zero_bytes" else junk)
        if truth["duplicate_folder"]:  # the real zip holds Dürer twice, once under a mojibake name
            src, dst = tmp / truth["duplicate_folder"]["copy_of"], tmp / truth["duplicate_folder"]["path"]
            dst.mkdir()
            for f in sorted(src.iterdir()):
                shutil.copyfile(f, dst / f.name.replace(DURER_NFD, DURER_MOJIBAKE, 1))
        _write_csv(tmp / "artists.csv", truth["counts"])
        write_json(tmp / SAMPLE_TRUTH, truth)
        _refuse_full(cfg.out)
        if cfg.out.exists():
            cfg.out.rmdir()
        os.rename(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    groups = truth["duplicate_groups"]
    n_files = sum(truth["counts"].values()) + (truth["duplicate_folder"] or {}).get("files", 0)
    print(
        f"sample-data: {n_files} files for {len(ARTISTS)} artists "
        f"({sum(len(g['members']) - 1 for g in groups)} copies in {len(groups)} duplicate groups, "
        f"{len(truth['odd_files'])} odd files, {int(cfg.quirks)} duplicate folder"
        + (f"; {len(truth['unseen'])} unseen artists in unseen/" if truth["unseen"] else "")
        + (
            f"; {sum(len(h['members']) for h in truth['hard_negatives'])} look-alikes in "
            f"{len(truth['hard_negatives'])} sets"
            if truth["hard_negatives"]
            else ""
        )
        + ") "
        f"-> {cfg.out} in {time.perf_counter() - start:.1f} s"
    )
    return truth


def _refuse_full(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtclfError(f"{out}: exists and is not an empty folder; choose a new path or remove it")


def _run(fn: Callable[[Job], None], jobs: list[Job], workers: int) -> None:
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers == 1 or len(jobs) < 32:
        for job in jobs:
            fn(job)
        return
    with get_context().Pool(workers) as pool:
        for _ in pool.imap_unordered(fn, jobs, chunksize=max(1, len(jobs) // (workers * 16))):
            pass


def _write_csv(path: Path, counts: dict[str, int]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i, a in enumerate(ARTISTS):
            bio = (
                f"{a.name} ({a.years}), {a.nationality.replace(',', '-')} painter; "
                f'{a.genre.replace(",", ", ")}. A "synthetic" bio by artclf sample-data.'
            )
            writer.writerow(
                [
                    i,
                    a.name,
                    a.years,
                    a.genre,
                    a.nationality,
                    bio,
                    f"http://en.wikipedia.org/wiki/{a.folder}",
                    counts[a.name],
                ]
            )


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(SampleDataConfig, generate, "artclf sample-data", __doc__, argv)
