"""``artclf dedup``'s settings: one frozen dataclass (``--help`` shows them with their units),
and the thresholds derived from them. The stage and its report both read it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from artclf.config import arg
from artclf.dedup import geometry, phash

VERIFY = ("geometry", "alignment", "none")


@dataclass(frozen=True)
class DedupConfig:
    work: Path = field(default=Path("work"), metadata=arg("work folder holding manifest.jsonl"))
    data_dir: Path | None = field(
        default=None, metadata=arg("data set root (default: from ingest_report.json)")
    )
    arch: str = field(
        default="resnet50", metadata=arg("torchvision model for embeddings (global-pool features)")
    )
    weights: str = field(
        default="IMAGENET1K_V2",
        metadata=arg(
            "torchvision weights name, a local file, or none "
            "(none: hashes only; random CNN features carry no signal)"
        ),
    )
    image_size: int = field(default=224, metadata=arg("px the whole image is resized to for the CNN"))
    cnn_threshold: float | None = field(
        default=None,
        metadata=arg(
            "cosine similarity of CNN embeddings at or above which a pair is a candidate "
            "(default 0.80 with a verification, 0.90 with --verify none or --align-threshold 0)"
        ),
    )
    verify: str = field(
        default="geometry",
        metadata=arg(
            "how candidates are confirmed: geometry (ORB keypoints + RANSAC homography; CNN candidates "
            "and hash pairs), alignment (aligned-thumbnail correlation; CNN candidates only) or none"
        ),
    )
    min_inliers: int = field(
        default=geometry.MIN_INLIERS,
        metadata=arg("--verify geometry: keypoint matches one homography must explain"),
    )
    min_keypoints: int = field(
        default=geometry.MIN_KEYPOINTS,
        metadata=arg("--verify geometry: an image with fewer keypoints joins a group by hashes only"),
    )
    align_threshold: float = field(
        default=0.85,
        metadata=arg("--verify alignment: aligned-thumbnail correlation a CNN candidate needs"),
    )
    max_loss: float = field(
        default=0.10,
        metadata=arg("warn (and draw montages) when dedup drops more than this share of an artist's images"),
    )
    hash_threshold: int = field(
        default=20, metadata=arg(f"max Hamming distance of the {phash.BITS}-bit hashes")
    )
    neighbors: int = field(default=10, metadata=arg("nearest neighbours searched per image"))
    batch_size: int = field(default=32, metadata=arg("images per CNN batch"))
    workers: int = field(
        default=min(4, os.cpu_count() or 1),
        metadata=arg("DataLoader worker processes; also the threads that verify pairs"),
    )
    part: int | None = field(
        default=None, metadata=arg("compute features of this part only (0-based), then stop")
    )
    num_parts: int = field(default=1, metadata=arg("number of parts (SLURM array / Indexed Job size)"))
    merge: bool = field(default=False, metadata=arg("fold WORK/dedup/parts/* into the cache, then group"))
    keep_mislabeled: bool = field(default=False, metadata=arg("keep one image of groups that span artists"))
    montages: int = field(
        default=6,
        metadata=arg(
            "montage PNGs of the largest groups, plus those behind each --max-loss warning (0: none at all)"
        ),
    )

    def __post_init__(self) -> None:
        if self.verify not in VERIFY:
            raise ValueError(f"--verify must be one of {', '.join(VERIFY)}, got {self.verify!r}")
        if self.min_inliers < 4 or self.min_keypoints < 0:
            raise ValueError("--min-inliers must be >= 4 (a homography needs 4), --min-keypoints >= 0")
        if not 0 <= self.max_loss <= 1:
            raise ValueError(f"--max-loss must be in [0, 1], got {self.max_loss}")
        if not 0 <= self.align_threshold <= 1:
            raise ValueError(f"--align-threshold must be in [0, 1], got {self.align_threshold}")
        if self.cnn_threshold is not None and not 0 < self.cnn_threshold <= 1:
            raise ValueError(f"--cnn-threshold must be in (0, 1], got {self.cnn_threshold}")
        if not 0 <= self.hash_threshold < phash.BITS // 2:
            raise ValueError(f"--hash-threshold must be in [0, {phash.BITS // 2}), got {self.hash_threshold}")
        if self.part is not None and not 0 <= self.part < self.num_parts:
            raise ValueError(f"--part must be in [0, --num-parts={self.num_parts}), got {self.part}")
        if self.part is not None and self.merge:
            raise ValueError("--part and --merge exclude each other: compute parts first, then merge once")
        if min(self.neighbors, self.batch_size, self.num_parts, self.image_size) < 1 or self.workers < 0:
            raise ValueError(
                "--neighbors, --batch-size, --num-parts, --image-size must be >= 1, --workers >= 0"
            )

    @property
    def cnn_cut(self) -> float:
        """The CNN candidate threshold in force. Measured on sample data with ImageNet
        MobileNetV2 (docs/benchmarks.md): at 0.90 alone, cropped re-photographs are missed;
        at 0.80 plus a verification, nothing is missed."""
        if self.cnn_threshold is not None:
            return self.cnn_threshold
        return 0.80 if self.verifies else 0.90

    @property
    def verifies(self) -> bool:
        return self.verify == "geometry" or (self.verify == "alignment" and self.align_threshold > 0)

    @property
    def use_cnn(self) -> bool:
        return self.weights.lower() != "none"
