"""What ``artclf sample-data`` is asked to make: its settings, one frozen dataclass (``--help``
shows them with their units). The stage (``stage.py``) and the plan (``plan.py``) both read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from artclf.config import arg
from artclf.sample_data.paintings import SIZES, UNSEEN


@dataclass(frozen=True)
class SampleDataConfig:
    out: Path = field(metadata=arg("output folder (Kaggle layout); must not exist or be empty", True))
    scale: float = field(default=0.05, metadata=arg("fraction of the real per-artist counts (at least 4)"))
    seed: int = field(default=0, metadata=arg("random seed; the same seed gives byte-identical files"))
    max_side: int = field(
        default=384, metadata=arg("cap on the longer image side, px (0: no cap, mostly 0.3-1.2 MP)")
    )
    sizes: str = field(
        default="capped",
        metadata=arg(
            "image sizes: capped (by --max-side), or kaggle: the Kaggle originals' sizes (median 1.5 MP, "
            "1-3 MP common, 2 %% of 10-14 MP; --max-side is then unused), for loader benchmarks"
        ),
    )
    quirks: bool = field(default=True, metadata=arg("plant the real set's odd files (--no-quirks: clean)"))
    hard_negatives: bool = field(
        default=False,
        metadata=arg(
            "also paint look-alikes that are different works (template families, dark sparse paintings, "
            "Mondrian grids; artclf.sample_data.lookalikes), listed in the truth: dedup must not merge them"
        ),
    )
    unseen: int = field(
        default=0,
        metadata=arg(
            f"also paint N artists outside the 50 (at most {len(UNSEEN)}: Hokusai, Cassatt, …; styles no "
            "known artist has) into DIR/unseen/<Name>/, outside the Kaggle layout (evaluate --unseen)"
        ),
    )
    workers: int = field(default=0, metadata=arg("worker processes (0 = all usable CPUs); same output"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0 (fraction of the real counts), got {self.scale}")
        if self.max_side != 0 and self.max_side < 32:
            raise ValueError(f"max_side must be 0 (real sizes) or at least 32 px, got {self.max_side}")
        if self.sizes not in SIZES:
            raise ValueError(f"sizes must be one of {', '.join(SIZES)}, got {self.sizes!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all CPUs), got {self.workers}")
        if not 0 <= self.unseen <= len(UNSEEN):
            raise ValueError(f"unseen must be in [0, {len(UNSEEN)}], got {self.unseen}")
