"""``artclf dedup``'s settings: one frozen dataclass (``--help`` shows them with their units),
and the thresholds derived from them. The stage and its report both read it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from artclf.config import arg
from artclf.dedup import geometry, phash, store

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
        default=None,
        metadata=arg("step 1 of 4: compute the features of this part (0-based) into the store, then stop"),
    )
    pairs: bool = field(
        default=False,
        metadata=arg("step 2: find the candidate pairs over all features, cut into --num-parts shares"),
    )
    verify_part: int | None = field(
        default=None, metadata=arg("step 3: verify this share (0-based) of the candidate pairs, then stop")
    )
    num_parts: int = field(
        default=1, metadata=arg("number of parts / shares (SLURM array / Indexed Job size)")
    )
    merge: bool = field(
        default=False, metadata=arg("step 4: union the verified pairs into groups, write manifest and report")
    )
    verify_batch: int = field(
        default=2048,
        metadata=arg("distinct pairs verified between checkpoints: what a killed verification part loses"),
    )
    chunk_images: int = field(
        default=store.CHUNK,
        metadata=arg("images per feature-store chunk: what a killed part loses at most"),
    )
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
        steps = [self.part is not None, self.pairs, self.verify_part is not None, self.merge]
        if sum(steps) > 1:
            raise ValueError(
                "--part, --pairs, --verify-part and --merge are steps: one per call (none: all four)"
            )
        for name, value in (("--part", self.part), ("--verify-part", self.verify_part)):
            if value is not None and not 0 <= value < self.num_parts:
                raise ValueError(f"{name} must be in [0, --num-parts={self.num_parts}), got {value}")
        if self.num_parts > 1 and not any(steps[:3]):
            raise ValueError("--num-parts goes with --part, --pairs or --verify-part")
        sizes = (self.neighbors, self.batch_size, self.num_parts, self.image_size, self.chunk_images)
        if min(*sizes, self.verify_batch) < 1:
            raise ValueError(
                "--neighbors, --batch-size, --num-parts, --image-size, --chunk-images and "
                "--verify-batch must be >= 1"
            )
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")

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
