"""``artclf compare EVAL_OR_RUN …``: one table of runs, and whether their differences are real.

Each argument is a run folder (``artclf train --run``; its ``eval-test/`` is used when there) or
an eval folder (``artclf evaluate --out``; its run is the folder of the model it scored, when
that still exists). The table (``compare.md``, and every number in ``compare.json``) holds per
run the flags that differ between the runs, the seed, val macro F1 of the epoch the model was
kept at, and test macro F1 and accuracy with bootstrap intervals; per config the mean ± sample
std over seeds; per pair of runs scored on the same test images, the paired bootstrap of the
difference in macro F1 and accuracy with the share of resamples where A beats B. Intervals are
computed here from ``predictions.csv`` + ``probabilities.npy``, so older evaluations work too.

Choose on val: test is for reporting the chosen model once (``artclf sweep summary`` does so).
TensorBoard's HParams view shows the same runs: ``tensorboard --logdir`` their parent folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from artclf.config import arg, stage_main
from artclf.errors import ArtclfError
from artclf.metrics.bootstrap import CONFIDENCE, RESAMPLES, SEED
from artclf.sweep import table
from artclf.sweep.runs import Run, resolve


@dataclass(frozen=True)
class CompareConfig:
    inputs: tuple[Path, ...] = field(
        metadata=arg("run folders (RUN) or eval folders (RUN/eval-test)", positional=True, many=True)
    )
    out: Path = field(default=Path("."), metadata=arg("folder for compare.md and compare.json"))
    resamples: int = field(default=RESAMPLES, metadata=arg("bootstrap resamples"))
    seed: int = field(default=SEED, metadata=arg("seed of the bootstrap draws (the same for every run)"))
    confidence: float = field(default=CONFIDENCE, metadata=arg("coverage of the intervals"))

    def __post_init__(self) -> None:
        if self.resamples < 1 or not 0 < self.confidence < 1:
            raise ValueError("--resamples must be >= 1 and --confidence in (0, 1)")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(CompareConfig, run, "artclf compare", __doc__, argv)


def named(runs: list[Run]) -> list[Run]:
    """Each run once, under a name the table can show (its path where two folders share a name)."""
    seen: dict[Path, Run] = {}
    for r in runs:
        key = r.path.resolve()
        if key in seen:
            raise ArtclfError(f"{r.path}: named twice (also as {seen[key].path})")
        seen[key] = r
    names = [r.name for r in runs]
    return [r if names.count(r.name) == 1 else replace(r, name=str(r.path)) for r in runs]


def run(cfg: CompareConfig) -> dict:
    runs = named([resolve(p) for p in cfg.inputs])
    data = table.build(runs, cfg.resamples, cfg.seed, cfg.confidence)
    text = f"# Comparison of {len(runs)} runs\n\n" + table.markdown(data)
    path = table.write(cfg.out, "compare", data, text)
    print(f"compare: {path} (and compare.json)")
    for g in data["groups"]:
        print("  " + table.group_line(g))
    for p in data["pairs"]:
        print("  " + table.pair_line(p))
    return data
