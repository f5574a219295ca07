"""``artclf train``'s flags: one frozen dataclass (``--help`` shows them), checked on creation.
The stage reads it; which of its flags may change on a resume is :mod:`artclf.train.runconfig`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from artclf.config import arg
from artclf.storage.outage import check_outlasts
from artclf.train.recipe import SYNC_BN_BELOW
from artclf.workers import WORKERS_HELP, check_workers, parse_workers

# What a read may take beyond the storage patience: its last attempt (botocore's own retries of
# one request, each up to a 10 s connect or 60 s read timeout), then decoding the batch.
PATIENCE_MARGIN_S = 60
BASE_BATCH = 64  # --lr is for this global batch; it scales linearly with the global batch


@dataclass(frozen=True)
class TrainConfig:
    shards: str = field(metadata=arg("shard set: folder or s3://bucket/prefix (with _info.json)"))
    run: Path = field(metadata=arg("run folder: config, state/, tb/, history.jsonl, model.pt"))
    arch: str = field(default="resnet50", metadata=arg("torchvision classification model"))
    weights: str = field(
        default="IMAGENET1K_V2", metadata=arg("torchvision weights name, a local file, or none")
    )
    image_size: int = field(default=512, metadata=arg("px, square model input"))
    batch_size: int = field(
        default=64,
        metadata=arg(
            "GLOBAL batch per optimizer step: per-device batch × processes × --grad-accum "
            "(must divide by processes × --grad-accum)"
        ),
    )
    epochs: int = field(default=15, metadata=arg("passes over the train split"))
    lr: float = field(default=3e-4, metadata=arg(f"AdamW peak learning rate at global batch {BASE_BATCH}"))
    weight_decay: float = field(default=0.05, metadata=arg("AdamW weight decay (not on norms and biases)"))
    warmup_epochs: float = field(default=1.0, metadata=arg("linear warm-up, in epochs"))
    ce_weight: float = field(default=0.3, metadata=arg("weight of cross-entropy in the loss"))
    f1_weight: float = field(
        default=0.7,
        metadata=arg(
            "weight of macro soft-F1 in the loss; its soft counts are summed over each micro-batch of "
            "all processes (--batch-size / --grad-accum images), one soft-F1 per micro-batch"
        ),
    )
    flip_classes: str = field(
        default="small",
        metadata=arg("classes flipped at random: small (below the median count), all, none, or names"),
    )
    workers: int | str = field(default="auto", metadata=arg(WORKERS_HELP, parse=parse_workers))
    gpu_decode: bool = field(
        default=False,
        metadata=arg(
            "decode train JPEGs on the GPU (nvJPEG, a batch at a time) and crop/flip there; the workers "
            "only read: for nodes with few cores per GPU (CUDA only)"
        ),
    )
    seed: int = field(default=0, metadata=arg("seeds weights of the head, data order and augmentation"))
    record_batches: bool = field(
        default=False,
        metadata=arg(
            "write RUN/batches.jsonl: per optimizer step, a sha256 of the global batch's sample keys and "
            "augmentation seeds (to compare runs step by step; one gather per step)"
        ),
    )
    save_every: int = field(
        default=0, metadata=arg("also save state every N optimizer steps (0: per epoch only)")
    )
    keep_last: int = field(default=3, metadata=arg("checkpoints kept in RUN/state"))
    grad_accum: int = field(
        default=1,
        metadata=arg(
            "micro-batches per optimizer step, their losses averaged; soft-F1 is computed per micro-batch "
            "(of all processes), not over --batch-size"
        ),
    )
    clip_grad: float = field(default=1.0, metadata=arg("max gradient norm (0 disables)"))
    channels_last: bool = field(default=True, metadata=arg("channels-last memory format (GPU only)"))
    compile: bool = field(default=False, metadata=arg("torch.compile the model (checkpoints stay plain)"))
    compile_backend: str = field(
        default="inductor", metadata=arg("torch.compile backend (aot_eager: to tell compiler bugs apart)")
    )
    sync_bn: str = field(
        default="auto",
        metadata=arg(f"SyncBatchNorm across GPUs: on, off, or auto (on below {SYNC_BN_BELOW} images/device)"),
    )
    ddp_timeout: int = field(
        default=1800,
        metadata=arg(
            "seconds a rank may wait in a collective before the job fails; must exceed "
            "--storage-patience (a rank waiting out an outage holds the others in the next collective)"
        ),
    )
    storage_patience: float = field(
        default=900.0,
        metadata=arg(
            "seconds each read or write waits out a storage outage (unreachable endpoint, 5xx, throttling) "
            "before the job fails; a corrupt or missing shard is skipped at once, a refusal fails at once"
        ),
    )
    stall_timeout: float = field(
        default=0.0,
        metadata=arg(
            "seconds without progress (a batch trained or evaluated, a save) after which every rank writes "
            "its stacks to RUN/debug/ and the job fails (0: 90 %% of --ddp-timeout, so that they are written "
            "before NCCL's watchdog ends the process)"
        ),
    )
    max_failed_shards: int = field(
        default=10, metadata=arg("failed train shards in a row that are skipped (0: the first fails the job)")
    )
    data_timeout: float = field(
        default=1200.0,
        metadata=arg(
            "seconds to wait for one batch from a DataLoader worker (0: forever); must exceed "
            "--storage-patience"
        ),
    )
    log_every: int = field(default=10, metadata=arg("optimizer steps between log lines / TensorBoard points"))
    check_every: int = field(
        default=10,
        metadata=arg(
            "optimizer steps between the all-rank check for a stop request or a non-finite loss (also "
            "before every save): a stop or a NaN ends every rank within this many steps"
        ),
    )
    eval_every: int = field(default=1, metadata=arg("epochs between evaluations on val (the last always)"))
    reject_rate: float = field(
        default=0.05,
        metadata=arg(
            "share of val images (known artists) answered 'unknown': sets the open-set threshold "
            "stored in model.pt with the calibration temperature (0: never unknown)"
        ),
    )
    endpoint_url: str | None = field(default=None, metadata=arg("S3 endpoint (default: AWS_ENDPOINT_URL)"))
    cache_dir: str = field(
        default="auto",
        metadata=arg(
            "node-local folder for whole copies of S3 train shards, read by every rank of the node (auto: "
            "$ARTCLF_CACHE or $TMPDIR/artclf-shards for s3:// shards, none for a folder; none: one "
            "ranged GET per sample)"
        ),
    )
    resume_with_changes: bool = field(
        default=False,
        metadata=arg(
            "resume although flags that change the result (arch aside) differ from the run's: each change "
            "is recorded in config.json with its step (without it such a rerun is refused)"
        ),
    )

    def __post_init__(self) -> None:
        if (
            min(
                self.batch_size,
                self.epochs,
                self.grad_accum,
                self.keep_last,
                self.log_every,
                self.image_size,
                self.check_every,
                self.eval_every,
            )
            < 1
        ):
            raise ValueError(
                "--batch-size, --epochs, --grad-accum, --keep-last, --log-every, --image-size, "
                "--check-every, --eval-every: >= 1"
            )
        if self.ce_weight < 0 or self.f1_weight < 0 or self.ce_weight + self.f1_weight == 0:
            raise ValueError("--ce-weight and --f1-weight must be >= 0 and not both 0")
        check_workers(self.workers)  # resolved once at start (artclf.workers.resolve_workers)
        if self.sync_bn not in ("auto", "on", "off"):
            raise ValueError(f"--sync-bn must be auto, on or off, got {self.sync_bn!r}")
        if self.ddp_timeout < 10 or self.data_timeout < 0 or self.max_failed_shards < 0:
            raise ValueError("--ddp-timeout >= 10 s, --data-timeout >= 0, --max-failed-shards >= 0")
        if not 0 <= self.reject_rate < 1:
            raise ValueError(f"--reject-rate must be in [0, 1), got {self.reject_rate}")
        if self.storage_patience < 0 or self.stall_timeout < 0:
            raise ValueError("--storage-patience and --stall-timeout must be >= 0 seconds")
        # A rank waiting out an outage holds its batch; its peers wait for it in the next
        # collective, and the DataLoader waits for the worker that reads: both must wait longer.
        check_outlasts(self.storage_patience, PATIENCE_MARGIN_S, ddp_timeout=self.ddp_timeout,
                       data_timeout=self.data_timeout, stall_timeout=self.stall)  # fmt: skip

    @property
    def stall(self) -> float:
        """Seconds without progress before the stall watchdog fires: ``--stall-timeout``, or a
        little under ``--ddp-timeout`` (at the collective timeout NCCL's watchdog ends the
        process from C++, and Python would write nothing)."""
        return self.stall_timeout or 0.9 * self.ddp_timeout
