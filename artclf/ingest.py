"""``artclf ingest DATA_DIR --work WORK``: scan a Kaggle "Best Artworks" folder into the manifest.

Reads ``artists.csv``, maps every folder of ``images/images`` to one artist (Unicode NFC
plus mojibake repair), drops a byte-identical second folder, and records every file's
header (size, mode, format), bytes and sha256 without decoding whole images. A file that
cannot be used is kept in the manifest with the reason as its ``status``; the scan goes on.
Writes ``WORK/manifest.jsonl`` and ``WORK/ingest_report.json``. The summary line and the
report count every file under ``images/images`` once: usable, unusable, in a duplicate folder,
or not read (outside the artist folders).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from artclf import manifest
from artclf.artists import CSV_COLUMNS, class_names, fold, repair_mojibake, repair_mojibake_rounds
from artclf.atomic import write_json
from artclf.config import arg, stage_main
from artclf.errors import ArtclfError

IMAGES = Path("images/images")
# EXIF orientations 5-8 turn the picture by 90 degrees: displayed width and height swap.
_TRANSPOSING = {5, 6, 7, 8}


@dataclass(frozen=True)
class IngestConfig:
    data_dir: Path = field(
        metadata=arg("Kaggle folder holding artists.csv and images/images", positional=True)
    )
    work: Path = field(default=Path("work"), metadata=arg("work folder for manifest.jsonl and reports"))
    workers: int = field(default=0, metadata=arg("processes reading files (0 = all cores)"))
    max_pixels: int = field(
        default=Image.MAX_IMAGE_PIXELS or 0,
        metadata=arg("images above this many pixels are unusable (Pillow's decompression-bomb limit)"),
    )

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.max_pixels <= 0:
            raise ValueError(f"--max-pixels must be > 0, got {self.max_pixels}")


def read_artists_csv(data_dir: Path) -> list[dict]:
    """Rows of ``artists.csv`` with ``paintings`` as int; clear errors for a wrong file."""
    path = data_dir / "artists.csv"
    if not path.is_file():
        raise ArtclfError(
            f"{path}: not found; DATA_DIR must be the unpacked Kaggle download "
            "(artists.csv and images/images/<Artist_Name>/), or run `artclf sample-data DIR`"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", "paintings") if c not in (reader.fieldnames or [])]
        if missing:
            raise ArtclfError(f"{path}: missing column(s) {missing}; expected {list(CSV_COLUMNS)}")
        rows = list(reader)
    for n, row in enumerate(rows, 2):
        try:
            row["paintings"] = int(row["paintings"])
        except ValueError:
            raise ArtclfError(f"{path}:{n}: paintings={row['paintings']!r} is not a number") from None
    if not rows:
        raise ArtclfError(f"{path}: no artists listed")
    return rows


def match_folders(images: Path, names: list[str]) -> dict[str, list[str]]:
    """csv name -> folder names under ``images`` that fold to it; errors for strays and gaps."""
    by_key = {fold(n).casefold(): n for n in names}
    matched: dict[str, list[str]] = defaultdict(list)
    for folder in sorted(p.name for p in images.iterdir() if p.is_dir()):
        key = fold(folder).casefold()
        if key not in by_key:
            close = difflib.get_close_matches(fold(folder), [fold(n) for n in names], n=1)
            hint = f" (closest: {close[0]!r})" if close else ""
            raise ArtclfError(f"{images / folder}: matches no artist in artists.csv{hint}")
        name = by_key[key]
        if folder != name.replace(" ", "_"):
            how = "mojibake repair" if repair_mojibake(folder) != folder else "Unicode normalisation"
            print(f"{images / folder}: matched to {name!r} by {how}")
        matched[name].append(folder)
    absent = [n for n in names if n not in matched]
    if absent:
        raise ArtclfError(f"{images}: no folder for artist(s) {absent} named in artists.csv")
    return matched


def _jpeg_complete(data: bytes) -> bool:
    return data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9")


def scan_file(path: str, max_pixels: int) -> dict:
    """Header, size and hash of one file; ``status`` says why it is unusable, if it is."""
    data = Path(path).read_bytes()
    row = {
        "width": 0,
        "height": 0,
        "mode": None,
        "format": None,
        "orientation": 1,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "status": manifest.OK,
    }
    if not data:
        return {**row, "status": "zero bytes"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return {**row, "status": f"too large ({e})"}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return {**row, "status": f"not an image ({type(e).__name__})"}
    with im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
        row.update(
            width=h if orientation in _TRANSPOSING else w,
            height=w if orientation in _TRANSPOSING else h,
            mode=im.mode,
            format=im.format,
            orientation=orientation,
        )
        if w * h > max_pixels:
            return {**row, "status": f"too large ({w}x{h} px > {max_pixels} px limit)"}
        # A JPEG ends with the EOI marker; only a file without one is decoded, to find out
        # whether it is really cut short (some encoders add trailing junk after EOI).
        if im.format != "JPEG" or not _jpeg_complete(data):
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as e:
                return {**row, "status": f"truncated ({e})"}
    return row


def _scan(args: tuple[str, int]) -> dict:
    return scan_file(*args)


def scan_all(files: list[Path], max_pixels: int, workers: int) -> list[dict]:
    """``scan_file`` over many files in parallel, with a progress bar, results in input order."""
    workers = workers or os.cpu_count() or 1
    jobs = [(str(p), max_pixels) for p in files]
    bar = dict(total=len(jobs), desc="ingest", unit="file", mininterval=1.0)
    if workers == 1:
        return [scan_file(*j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_scan, jobs, chunksize=32), **bar))


def resolve_duplicate_folders(rows: list[dict], matched: dict[str, list[str]]) -> list[dict]:
    """Mark the files of a byte-identical second folder of the same artist as duplicates.

    The primary is the folder whose name needs the least repair. Two folders of one artist
    whose contents differ are an error: merging them silently could double-count paintings.
    """
    notes = []
    for name, folders in matched.items():
        if len(folders) < 2:
            continue
        # fewest repair rounds first: NFD/NFC 0, Albrecht_Du╠êrer 1, Albrecht_DuΓòá├¬rer 2
        folders = sorted(folders, key=lambda f: (repair_mojibake_rounds(f)[1], f))
        content = {f: sorted(r["sha256"] for r in rows if r["folder"] == f) for f in folders}
        primary = folders[0]
        for other in folders[1:]:
            if content[other] != content[primary]:
                raise ArtclfError(
                    f"{IMAGES / other} and {IMAGES / primary} both map to {name!r} but hold different "
                    "files; remove the one that is not the real download and rerun"
                )
            for r in rows:
                if r["folder"] == other:
                    r["status"] = f"duplicate folder of {IMAGES / primary}"
            notes.append(
                {
                    "folder": str(IMAGES / other),
                    "copy_of": str(IMAGES / primary),
                    "artist": name,
                    "files": sum(r["folder"] == other for r in rows),
                }
            )
            print(f"{IMAGES / other}: byte-identical copy of {IMAGES / primary}; its files are not used")
    return notes


def ingest(cfg: IngestConfig) -> dict:
    """Scan ``cfg.data_dir`` and write the manifest and the report; returns the report."""
    start = time.perf_counter()
    data_dir = cfg.data_dir
    csv_rows = read_artists_csv(data_dir)
    names = [r["name"] for r in csv_rows]
    images = data_dir / IMAGES
    if not images.is_dir():
        raise ArtclfError(f"{images}: not found; expected images/images/<Artist_Name>/ under {data_dir}")
    matched = match_folders(images, names)
    labels = {c: i for i, c in enumerate(class_names(names))}

    files, owners = [], []
    for name, folders in matched.items():
        for folder in folders:
            for p in sorted((images / folder).iterdir()):
                if p.is_file():
                    files.append(p)
                    owners.append((name, folder))
    not_read = files_not_read(data_dir, files)
    scanned = scan_all(files, cfg.max_pixels, cfg.workers)
    rows = [
        {
            "path": p.relative_to(data_dir).as_posix(),
            "artist": name,
            "label": labels[fold(name)],
            "folder": folder,
            **info,
        }
        for p, (name, folder), info in zip(files, owners, scanned, strict=True)
    ]
    dup_folders = resolve_duplicate_folders(rows, matched)
    report = build_report(cfg, csv_rows, rows, dup_folders, not_read, time.perf_counter() - start)
    for r in rows:
        del r["folder"]
    out = manifest.write_manifest(cfg.work, rows)
    write_json(cfg.work / "ingest_report.json", report)
    print(f"ingest: {summary(report)}; {len(labels)} classes in {report['seconds']:.1f}s -> {out}")
    for u in report["unusable"]:
        print(f"  unusable: {u['path']}: {u['status']}")
    return report


def files_not_read(data_dir: Path, files: list[Path]) -> list[str]:
    """Files under images/images that are not directly in an artist folder (a loose
    ``.DS_Store``, a subfolder of an artist's folder): not read, but counted, so the summary
    adds up to what is on disk."""
    read = {p.relative_to(data_dir).as_posix() for p in files}
    return sorted(
        rel
        for top, _, names in os.walk(data_dir / IMAGES)
        for rel in (Path(top, n).relative_to(data_dir).as_posix() for n in names)
        if rel not in read
    )


def summary(report: dict) -> str:
    """``882 files in images/images = 846 usable + 3 unusable + 33 in <folder> (…)``: one term
    per kind of file, so that the terms add up to the files on disk."""
    terms = [f"{report['usable']} usable", f"{len(report['unusable'])} unusable"]
    for d in report["duplicate_folders"]:
        folder, primary = (Path(d[k]).name for k in ("folder", "copy_of"))
        terms.append(f"{d['files']} in {folder} (a byte-identical copy of {primary}, not used)")
    if report["not_read"]:
        first = report["not_read"][0]
        terms.append(f"{len(report['not_read'])} not read (outside the artist folders, e.g. {first})")
    return f"{report['files']} files in {IMAGES} = " + " + ".join(terms)


def build_report(
    cfg: IngestConfig,
    csv_rows: list[dict],
    rows: list[dict],
    dup_folders: list[dict],
    not_read: list[str],
    seconds: float,
) -> dict:
    """Counts per artist against the csv, unusable files with reasons, and odd-but-usable files."""
    usable = manifest.usable(rows)
    per_artist = Counter(r["artist"] for r in usable)
    primary_files = Counter(r["artist"] for r in rows if not r["status"].startswith("duplicate folder"))
    empty = [c["name"] for c in csv_rows if per_artist[c["name"]] == 0]
    if empty:
        raise ArtclfError(
            f"{cfg.data_dir / IMAGES}: no usable image for artist(s) {empty}; a class would be lost"
        )
    artists = {}
    for c in csv_rows:
        n = c["name"]
        artists[n] = {"csv_paintings": c["paintings"], "files": primary_files[n], "usable": per_artist[n]}
        if primary_files[n] != c["paintings"]:
            print(
                f"warning: {n!r}: artists.csv says {c['paintings']} paintings, "
                f"the folder holds {primary_files[n]}"
            )
    odd = [{"path": r["path"], "note": note} for r in usable for note in _oddities(r)]
    return {
        "data_dir": str(cfg.data_dir),
        # files == usable + len(unusable) + duplicate_files + len(not_read): every file on disk
        "files": len(rows) + len(not_read),
        "usable": len(usable),
        "duplicate_files": sum(d["files"] for d in dup_folders),
        "classes": len(csv_rows),
        "seconds": round(seconds, 2),
        "per_artist": artists,
        "duplicate_folders": dup_folders,
        "unusable": [
            {"path": r["path"], "status": r["status"]}
            for r in rows
            if r["status"] != manifest.OK and not r["status"].startswith("duplicate folder")
        ],
        "odd": odd,
        "not_read": not_read,
    }


def _oddities(row: dict) -> list[str]:
    """Usable but worth knowing: later stages handle these (exif_transpose, convert('RGB'))."""
    notes = []
    if row["mode"] != "RGB":
        notes.append(f"mode {row['mode']}")
    suffix = Path(row["path"]).suffix.lower()
    if row["format"] == "PNG" and suffix in (".jpg", ".jpeg"):
        notes.append(f"PNG data with a {suffix} name")
    if row["orientation"] != 1:
        notes.append(f"EXIF orientation {row['orientation']}")
    return notes


def main(argv: list[str] | None = None) -> int:
    return stage_main(IngestConfig, ingest, "artclf ingest", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
