"""``artclf eda --work WORK``: class counts and image sizes, as plots and numbers.

Reads only ``WORK/manifest.jsonl``. Writes ``WORK/eda/class_counts.png`` (sorted bars, every
artist named), ``WORK/eda/image_sizes.png`` (width x height and megapixels) and
``WORK/eda/summary.json``. On the real download the per-class numbers are the published
ones: min 24, max 877, mean 168.92.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artclf import manifest, plots
from artclf.atomic import write_json
from artclf.config import arg, stage_main
from artclf.errors import ArtclfError

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass(frozen=True)
class EdaConfig:
    work: Path = field(default=Path("work"), metadata=arg("work folder holding manifest.jsonl"))


def _stats(values: np.ndarray) -> dict:
    return {f"q{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES} | {
        "mean": float(values.mean())
    }


def summarize(rows: list[dict]) -> dict:
    """Per-class count statistics, modes, formats and size quantiles of the usable images."""
    ok = manifest.usable(rows)
    if not ok:
        raise ArtclfError("manifest has no usable image; check WORK/ingest_report.json")
    counts = Counter(r["artist"] for r in ok)
    per_class = np.array(list(counts.values()))
    w = np.array([r["width"] for r in ok], dtype=float)
    h = np.array([r["height"] for r in ok], dtype=float)
    return {
        "images": len(ok),
        "classes": len(counts),
        "per_class": {
            "min": int(per_class.min()),
            "max": int(per_class.max()),
            "mean": round(float(per_class.mean()), 2),
            "median": float(np.median(per_class)),
            "min_artist": min(counts, key=lambda a: (counts[a], a)),
            "max_artist": max(counts, key=lambda a: (counts[a], a)),
        },
        "counts": dict(counts.most_common()),
        "modes": dict(Counter(r["mode"] for r in ok).most_common()),
        "formats": dict(Counter(r["format"] for r in ok).most_common()),
        "width": _stats(w),
        "height": _stats(h),
        "megapixels": _stats(w * h / 1e6),
    }


def plot_class_counts(counts: dict[str, int], path: Path) -> None:
    plt = plots.pyplot()

    names = sorted(counts, key=lambda a: (-counts[a], a))
    values = [counts[a] for a in names]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(names) + 1.2))
    ax.barh(range(len(names)), values, color="#4c72b0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # largest class on top
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center", fontsize=7)
    ax.set_xlabel("usable images")
    mean = float(np.mean(values))
    ax.axvline(mean, color="#c44e52", lw=1, ls="--", label=f"mean {mean:.2f}")
    ax.legend(loc="lower right")
    ax.set_title(f"Images per artist ({len(names)} artists, {sum(values)} images)")
    ax.margins(x=0.08)
    plots.save(fig, path)


def plot_image_sizes(rows: list[dict], path: Path) -> None:
    plt = plots.pyplot()

    w = np.array([r["width"] for r in rows], dtype=float)
    h = np.array([r["height"] for r in rows], dtype=float)
    mp = w * h / 1e6
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    a.scatter(w, h, s=6, alpha=0.4, color="#4c72b0", edgecolors="none")
    top = max(w.max(), h.max()) * 1.05
    a.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="square")
    a.set(
        xlabel="width (px)",
        ylabel="height (px)",
        title="Image sizes (as displayed)",
        xlim=(0, top),
        ylim=(0, top),
    )
    a.legend(loc="upper left")
    b.hist(mp, bins=40, color="#55a868")
    b.axvline(np.median(mp), color="#c44e52", lw=1, ls="--", label=f"median {np.median(mp):.2f} MP")
    b.set(xlabel="megapixels", ylabel="images", title="Megapixels per image")
    b.legend()
    plots.save(fig, path)


def eda(cfg: EdaConfig) -> dict:
    rows = manifest.read_manifest(cfg.work)
    summary = summarize(rows)
    out = cfg.work / "eda"
    plot_class_counts(summary["counts"], out / "class_counts.png")
    plot_image_sizes(manifest.usable(rows), out / "image_sizes.png")
    write_json(out / "summary.json", summary)
    pc = summary["per_class"]
    print(
        f"eda: {summary['images']} images, {summary['classes']} classes, per class min {pc['min']} "
        f"({pc['min_artist']}), max {pc['max']} ({pc['max_artist']}), mean {pc['mean']} -> {out}/"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    return stage_main(EdaConfig, eda, "artclf eda", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
