"""``accelerate launch -m artclf.train --shards URL --run RUN``: train the painter classifier.

Defaults reproduce the published recipe: torchvision ResNet50 (IMAGENET1K_V2), 512 px,
global batch 64, 15 epochs, loss 0.3·CE + 0.7·soft-F1, horizontal flips for the smaller
classes. Process count and mixed precision come from ``accelerate launch`` (or its config
file), not from here. Every epoch is an exact pass in a seeded order (``train/order.py``).
Restarting the same command resumes from the newest ``RUN/state`` to the weights an
uninterrupted run would have had (flags that change the result are refused on a resume,
``train/runconfig.py``). SIGTERM or SIGUSR1 on any rank: every rank stops at the next step,
saves, and exits 75; SIGINT (Ctrl-C) does the same and exits 130, a second one exits at once.
One job per run folder (a lock on ``RUN/.lock``). A storage outage is waited out for up to
``--storage-patience`` seconds per read (``artclf.storage``); a collective that waits longer
than ``--ddp-timeout``, or a rank without progress for ``--stall-timeout``, ends every rank
with its stacks in ``RUN/debug/`` (``train/hangs.py``), so the scheduler can restart the job.
"""

from __future__ import annotations

import faulthandler
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from itertools import islice

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed

from artclf import plots, storage
from artclf.artists import display_names
from artclf.atomic import write_json, write_jsonl
from artclf.config import stage_main, to_dict
from artclf.data import SampleIndex, eval_loader, read_info, train_index
from artclf.errors import ArtclfError
from artclf.metrics.calibration import calibrate
from artclf.metrics.eval_loop import evaluate
from artclf.model import build_model, save_model
from artclf.storage.outage import set_patience, waited_s
from artclf.train import checkpoint, hangs, outcome, runconfig, runlog
from artclf.train.config import BASE_BATCH, TrainConfig
from artclf.train.engine import Meter, lr_at, train_one_epoch
from artclf.train.order import Order
from artclf.train.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, Preemption, die, watch_launcher
from artclf.train.recipe import flip_set, make_optimizer, sync_bn_choice
from artclf.train.runlock import check_alone, lock_run
from artclf.train.shardcache import ShardCache, default_root
from artclf.train.stream import decode_on_device, train_stream
from artclf.transforms import Preprocess
from artclf.workers import resolve_workers


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable(all_threads=True)  # NCCL's watchdog aborts a hung rank: say where it was
    try:
        return stage_main(TrainConfig, run, "artclf train", __doc__, argv)
    except SystemExit as e:
        if e.code == 2:  # argparse: a bad flag, permanent (train/outcome.py)
            outcome.bad_usage(argv)
        raise


def run(cfg: TrainConfig) -> int:
    """Set up the process, train; a permanent error is recorded for the launch script and ends
    the launcher's restarts (``train/outcome.py``)."""
    try:
        return _run(cfg)
    except ArtclfError as e:
        if e.permanent:
            outcome.permanent(cfg.run, int(os.environ.get("RANK", "0")), str(e))
        raise


def _run(cfg: TrainConfig) -> int:
    """Set up the process, train; a broken collective ends this rank with its stacks written."""
    stop = Preemption(deadline=min(120.0, cfg.ddp_timeout))
    watch_launcher()
    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))])
    check_alone(acc)
    set_patience(cfg.storage_patience)
    lock, watch, code = None, None, None
    try:
        lock, folder = lock_run(acc, cfg.run)
        if acc.device.type == "cuda":  # NCCL's Flight Recorder dumps here (its writer makes no folder)
            folder.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("TORCH_FR_DUMP_TEMP_FILE", str(folder / "nccl-rank-"))
        watch = hangs.Watch(folder, acc.process_index, acc.num_processes, cfg.stall)
        code = train(cfg, acc, stop, watch)
    except ArtclfError:
        acc.end_training()  # raised on every rank (config, data) or only here: the agent ends the rest
        raise
    except Exception as e:
        if acc.num_processes > 1:  # a timed-out or broken collective: no clean way out
            path = watch.dump(f"collective failed: {type(e).__name__}: {e}", e) if watch else None
            die(f"{type(e).__name__}: {e}" + (f"; stacks in {path}" if path else ""))
        raise
    finally:
        if watch is not None:
            watch.stop()
        if lock is not None:
            if code is None and (watch is None or watch.state is None or not watch.state.step):
                lock.discard_unused()  # failed before its first step: no folder of a path typo
            lock.release()
    acc.end_training()  # an exit without destroying the process group can abort in gloo/NCCL
    return code


def train(cfg: TrainConfig, acc: Accelerator, stop: Preemption, watch: hangs.Watch | None = None) -> int:
    """The run in this process group; ``watch``: the stall watchdog, with the debug folder all
    ranks agreed on (:func:`run`); without one, each rank names its own."""
    if watch is None:
        folder = cfg.run / hangs.DEBUG / hangs.stamp()
        watch = hangs.Watch(folder, acc.process_index, acc.num_processes, cfg.stall)
    set_seed(cfg.seed)
    storage.set_endpoint(cfg.endpoint_url)
    info = read_info(cfg.shards)
    classes = info["classes"]
    world = acc.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ArtclfError(
            f"--batch-size {cfg.batch_size} is the global batch; it must divide by "
            f"processes × --grad-accum = {world} × {cfg.grad_accum}"
        )
    index = train_index(info, cfg.shards)
    order = Order(len(index), cfg.batch_size, cfg.seed, cfg.grad_accum, world)
    per_device, steps = order.per_device, order.steps  # steps: optimizer steps per epoch
    total, warmup = steps * cfg.epochs, round(steps * cfg.warmup_epochs)
    peak_lr = cfg.lr * cfg.batch_size / BASE_BATCH
    pre = Preprocess(image_size=cfg.image_size, resize=cfg.image_size)
    flips = flip_set(cfg.flip_classes, classes, info["splits"]["train"]["class_counts"])
    sync_bn = sync_bn_choice(cfg.sync_bn, per_device, world, acc.device.type)
    workers = resolve_workers(cfg.workers)  # (count, why): config.json keeps what was asked

    cuda = acc.device.type == "cuda"
    if cfg.gpu_decode and not cuda:
        raise ArtclfError(f"--gpu-decode decodes on CUDA devices; these processes use {acc.device.type}")
    torch.backends.cudnn.benchmark = True  # fixed input size: autotune each convolution once
    model = build_model(cfg.arch, cfg.weights, len(classes), pre)
    if sync_bn[0]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = cfg.channels_last and cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile(backend=cfg.compile_backend)  # in place: state_dict keys stay plain
    optimizer = make_optimizer(model, peak_lr, cfg.weight_decay, fused=cuda)
    model, optimizer = acc.prepare(model, optimizer)
    state = checkpoint.TrainState()
    acc.register_for_checkpointing(state)
    watch.state = state
    data_digest = index.digest()
    change = _check_resume(acc, cfg, data_digest)  # before anything is loaded or written
    resume = checkpoint.resume(acc, cfg.run / "state", state)
    where = runlog.placement(acc)
    if acc.is_main_process:
        derived = runlog.derived(
            acc, per_device, steps, total, warmup, peak_lr, flips, classes, info, resume, sync_bn, workers
        )
        record = {
            "config": to_dict(cfg),
            "derived": {**derived, "train_index_sha256": data_digest},
            "placement": where,
            "versions": runlog.versions(),
        }
        if resume is not None and (cfg.run / "config.json").is_file():
            before = json.loads((cfg.run / "config.json").read_text())
            record["config"] = before["config"]  # the flags the run started with
            record["changes"] = before.get("changes", []) + (
                [{**change, "step": state.step}] if change else []
            )
        write_json(cfg.run / "config.json", record)
        runlog.print_derived(
            acc, cfg, per_device, steps, peak_lr, flips, resume, state, sync_bn, where, workers
        )
    # a resumed run drops what the run it replaces logged after its last checkpoint
    writer = runlog.writer_for(acc, cfg.run, purge_step=state.step + 1 if resume else None)
    history = plots.read_history(cfg.run / "history.jsonl")[: state.epoch]

    def save_state() -> None:
        watch.phase("save")
        checkpoint.save(acc, cfg.run / "state", state.step, cfg.keep_last)
        watch.progress("train: waiting for data")

    def preempted(epoch: int) -> int:
        stop.acknowledge()
        save_state()
        code = EXIT_INTERRUPTED if stop.interrupted else EXIT_PREEMPTED
        outcome.record(cfg.run, acc.process_index, code, f"stop requested: state saved at step {state.step}")
        if stop.interrupted:
            acc.print(f"interrupted at step {state.step}: state saved; rerun the same command to resume")
            return code
        acc.print(f"preempted at step {state.step} (epoch {epoch + 1}): state saved, exit {code}")
        return code

    cache = _cache(cfg, data_digest, info)
    if cache is not None:
        train_bytes = sum(
            info.get("shards", {}).get(f, {}).get("bytes", 0) for f in info["splits"]["train"]["filenames"]
        )
        acc.print(f"train shards copied whole to {cache.dir} on each node, once ({train_bytes / 1e9:.2f} GB)")
    stream = _input_stream(cfg, acc, index, order, pre, flips, state, cache, workers[0])
    record = runlog.BatchRecord(acc, cfg.run / "batches.jsonl", state.step) if cfg.record_batches else None
    meter = Meter(world)
    # built once: its workers are forked once, not at each evaluation from a process full of
    # threads (docs/design.md, "No fork after threads")
    rank, timeout = acc.process_index, cfg.data_timeout
    val_batches = eval_loader(
        info, "val", pre, per_device, workers[0], rank, world, timeout, cuda, persistent=True
    )

    def evaluating() -> bool:  # asked before each val batch: progress, and whether to stop
        watch.progress("evaluate (its batches, then one gather)")
        return stop.requested

    watch.start()
    for epoch in range(state.epoch, cfg.epochs):
        t0, waited = time.perf_counter(), waited_s()
        # none left when a step checkpoint landed on the epoch's last step: go on to evaluation
        remaining = steps - state.step_in_epoch
        out = train_one_epoch(
            acc,
            model,
            optimizer,
            islice(stream, remaining * cfg.grad_accum),
            num_classes=len(classes),
            ce_weight=cfg.ce_weight,
            f1_weight=cfg.f1_weight,
            grad_accum=cfg.grad_accum,
            clip_grad=cfg.clip_grad,
            lr_of_step=lambda s: lr_at(s, total, warmup, peak_lr),
            state=state,
            stop_requested=lambda: stop.requested,
            on_log=lambda row: runlog.log_scalars(writer, "train", row, state.step),
            on_save=save_state,
            save_every=cfg.save_every,
            log_every=cfg.log_every,
            total_steps=steps,
            check_every=cfg.check_every,
            meter=meter,
            channels_last=channels_last,
            on_step=None if record is None else lambda batches: record(state, batches),
            watch=watch,
        )
        if out["preempted"]:
            return preempted(epoch)
        val = preds = None
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            expected = info["splits"]["val"]["num_samples"]
            val, preds = evaluate(acc, model, val_batches, classes, expected, evaluating, channels_last)
            if val is None:  # stopped during evaluation: the saved step is the epoch's last one
                return preempted(epoch)
        state.epoch, state.step_in_epoch, state.epoch_sums = epoch + 1, 0, [0.0] * 5
        out["storage_wait_s"] = round(_max_over_ranks(acc, waited_s() - waited), 1)
        if acc.is_main_process:
            row = runlog.epoch_row(epoch + 1, state.step, out, val, time.perf_counter() - t0)
            _record_epoch(
                cfg, acc, writer, history, row, val, preds, state, acc.unwrap_model(model), info, pre
            )
        state.best_f1 = _broadcast(acc, state.best_f1)
        save_state()
    watch.stop()
    if acc.is_main_process:
        runlog.hparams_summary(writer, cfg, history)
        writer.close()
        acc.print(
            f"done: best val macro F1 {state.best_f1:.4f} at epoch {state.best_epoch} "
            f"-> {cfg.run / 'model.pt'}"
        )
    return 0


def _check_resume(acc: Accelerator, cfg: TrainConfig, data_digest: str) -> dict | None:
    """When RUN holds a checkpoint: the main process compares this rerun's flags and data with
    the run's config.json (:mod:`artclf.train.runconfig`); every rank learns the outcome."""
    from accelerate.utils import broadcast_object_list

    outcome: list = [None]
    if acc.is_main_process and checkpoint.latest(cfg.run / "state") is not None:
        try:
            outcome = [("ok", runconfig.check(cfg.run / "config.json", to_dict(cfg), data_digest,
                                              cfg.resume_with_changes, step=-1))]  # fmt: skip
        except ArtclfError as e:
            outcome = [("error", str(e))]
    broadcast_object_list(outcome)
    if outcome[0] and outcome[0][0] == "error":
        raise ArtclfError(outcome[0][1])
    return outcome[0][1] if outcome[0] else None


def _cache(cfg: TrainConfig, data_digest: str, info: dict) -> ShardCache | None:
    """The node-local shard cache ``--cache-dir`` asks for (auto: for shard sets on S3)."""
    if cfg.cache_dir == "none" or (cfg.cache_dir == "auto" and not storage.is_s3(cfg.shards)):
        return None
    root = default_root() if cfg.cache_dir == "auto" else cfg.cache_dir
    return ShardCache(root, data_digest, info.get("shards"))


def _input_stream(
    cfg: TrainConfig,
    acc: Accelerator,
    index: SampleIndex,
    order: Order,
    pre: Preprocess,
    flips: frozenset[int],
    state: checkpoint.TrainState,
    cache: ShardCache | None,
    workers: int,
) -> Iterator:
    """The run's one train stream, from the micro-batch after the checkpoint it resumes from
    (nothing before it is read); epochs are sliced off it."""
    start = state.epoch * order.micro + state.step_in_epoch * cfg.grad_accum
    cuda = acc.device.type == "cuda"
    stream = iter(
        train_stream(
            index, order, acc.process_index, pre, workers, flips, start=start,
            max_failed_shards=cfg.max_failed_shards, timeout=cfg.data_timeout, pin_memory=cuda,
            encoded=cfg.gpu_decode, cache=cache,
        )
    )  # fmt: skip
    if cfg.gpu_decode:
        return decode_on_device(stream, pre, flips, acc.device)
    return stream


def _record_epoch(cfg, acc, writer, history, row, val, preds, state, model, info, pre) -> None:
    """Main process, after an epoch: history.jsonl, TensorBoard, ``model.pt`` (with its
    calibration and open-set threshold fitted on these val predictions, its val metrics and
    confusion matrix) when val macro F1 improved, the learning curve, the line."""
    classes = info["classes"]
    epoch = row["epoch"]
    history.append(row)
    write_jsonl(cfg.run / "history.jsonl", history)
    runlog.log_scalars(writer, "train", {"storage_wait_s": row["storage_wait_s"]}, state.step)
    if val is not None:
        val_row = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        runlog.log_scalars(writer, "val", val_row, state.step)
    if val is not None and val["macro_f1"] > state.best_f1:
        state.best_f1, state.best_epoch = val["macro_f1"], epoch
        extra = {
            "config": to_dict(cfg),
            "epoch": epoch,
            "val": runlog.scalars(val),
            "artists": display_names(classes, info.get("artists")),
            "trained_on": {
                "shards": cfg.shards,
                "name": info.get("name"),
                "images": info["splits"]["train"]["num_samples"],
                "classes": len(classes),
                "generated_sample": info.get("data", {}).get("generated_sample"),
            },
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **calibrate(preds["logits"], preds["labels"], cfg.reject_rate),
        }
        save_model(cfg.run / "model.pt", model, classes, pre, cfg.arch, extra)
        write_json(cfg.run / "val_metrics.json", val)
        runlog.confusion(writer, cfg.run, classes, epoch, state.step)
    plots.learning_curve(plots.read_history(cfg.run / "history.jsonl"), cfg.run / "learning_curve.png")
    acc.print(runlog.epoch_line(row, cfg.epochs))


def _broadcast(acc: Accelerator, value: float) -> float:
    from accelerate.utils import broadcast

    return float(broadcast(torch.tensor([value], device=acc.device)).item())


def _max_over_ranks(acc: Accelerator, value: float) -> float:
    """The largest of each rank's ``value`` (its peers waited for the slowest in a collective)."""
    t = torch.tensor([value], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())
