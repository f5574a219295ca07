"""``artclf evaluate``'s flags: one frozen dataclass (``--help`` shows them), checked on creation.
The stage and the report read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from artclf import storage
from artclf.config import arg
from artclf.metrics import bootstrap
from artclf.workers import WORKERS_HELP, check_workers, parse_workers


@dataclass(frozen=True)
class EvaluateConfig:
    model: Path = field(metadata=arg("model.pt written by artclf train"))
    shards: str = field(metadata=arg("shard set: folder or s3://bucket/prefix (with _info.json)"))
    split: str = field(default="test", metadata=arg("split to score (the trainer chose its model on val)"))
    out: Path | None = field(default=None, metadata=arg("output folder (default: RUN/eval-<split>/)"))
    batch_size: int = field(default=64, metadata=arg("images per batch, per process"))
    workers: int | str = field(default="auto", metadata=arg(WORKERS_HELP, parse=parse_workers))
    errors: int = field(default=16, metadata=arg("misclassified images in errors.png (0 disables)"))
    unseen: Path | None = field(
        default=None,
        metadata=arg("folder of paintings by artists the model never saw: open-set AUROC and rejection"),
    )
    resamples: int = field(
        default=bootstrap.RESAMPLES,
        metadata=arg("bootstrap resamples of the split behind each interval (percentile bootstrap, >= 1)"),
    )
    bootstrap_seed: int = field(
        default=bootstrap.SEED, metadata=arg("seed of the bootstrap draws (same seed, same intervals)")
    )
    confidence: float = field(
        default=bootstrap.CONFIDENCE, metadata=arg("coverage of each interval, in (0, 1), e.g. 0.95")
    )
    endpoint_url: str | None = field(default=None, metadata=arg("S3 endpoint (default: AWS_ENDPOINT_URL)"))
    storage_patience: float = field(
        default=storage.DEFAULT_PATIENCE_S,
        metadata=arg(
            "seconds each read waits out a storage outage (unreachable endpoint, 5xx, throttling) before "
            "the stage fails; a broken shard is skipped and counted at once, a refusal fails at once"
        ),
    )
    data_timeout: float = field(
        default=1200.0,
        metadata=arg(
            "seconds to wait for one batch from a DataLoader worker (0: forever); must exceed "
            "--storage-patience. On a timeout every thread's stack goes to stderr"
        ),
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.errors < 0:
            raise ValueError("--batch-size must be >= 1, --errors >= 0")
        check_workers(self.workers)
        if self.resamples < 1 or self.bootstrap_seed < 0:
            raise ValueError(
                f"--resamples must be >= 1 (got {self.resamples}; the default {bootstrap.RESAMPLES} keeps "
                f"an interval's ends stable) and --bootstrap-seed >= 0 (got {self.bootstrap_seed})"
            )
        if not 0 < self.confidence < 1:
            raise ValueError(f"--confidence must lie in (0, 1), e.g. 0.95 for 95 % (got {self.confidence})")
        if self.storage_patience < 0 or self.data_timeout < 0:
            raise ValueError("--storage-patience and --data-timeout must be >= 0 seconds")
        storage.check_outlasts(self.storage_patience, data_timeout=self.data_timeout)
