"""Training state on disk: ``RUN/state/step-00001234/`` written atomically, last K kept.

``accelerator.save_state`` writes into ``state/.tmp-step-…`` on every rank; each rank fsyncs
what it wrote; once all ranks are done, the main process renames it to ``state/step-…`` (a
rename is atomic) and fsyncs the folder, then drops the oldest beyond ``keep``. A folder under
its final name is therefore complete, and the newest one is where a restarted job resumes.

Resuming, the main process chooses (a node of a shared file system with attribute caching
may not list the newest folder yet) and every rank loads what it was told. A checkpoint that
does not load on some rank (torn by a crash or a lost write) is reported, and the one before
it is tried; every rank then checks that all of them hold the same step.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from artclf.errors import ArtclfError

_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """Counters saved with every checkpoint (``register_for_checkpointing``)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # optimizer steps done in the epoch under way
    best_f1: float = -1.0
    best_epoch: int = -1
    # the epoch under way's figures so far, summed over all ranks (loss, CE, soft-F1, each ×
    # images; images; samples lost): a resumed epoch reports the whole epoch, not its tail
    epoch_sums: list[float] = field(default_factory=lambda: [0.0] * 5)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def checkpoints(state_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.iterdir() if p.is_dir() and _NAME.match(p.name))


def latest(state_dir: Path) -> Path | None:
    found = checkpoints(state_dir)
    return found[-1] if found else None


def save(acc: Accelerator, state_dir: Path, step: int, keep: int) -> Path:
    """Save model, optimizer, scaler, RNG and registered objects; atomic; keep the last ``keep``.

    A save that fails on any rank (a full disk, a quota, a read-only or vanished folder) raises
    :class:`ArtclfError` on every rank, naming the folder and the error, after removing its
    partial files: the newest checkpoint is still the one before, and a rerun resumes there.
    """
    final = state_dir / f"step-{step:08d}"
    tmp = state_dir / f".tmp-step-{step:08d}"
    error = None
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp))
    except Exception as e:  # OSError, or a serializer's own error wrapping one
        error = f"{type(e).__name__}: {e}"
    errors = gather_object([error])  # every file written, or the failures (also the barrier)
    if not any(errors):
        try:
            _fsync_files(tmp)  # every rank: on a shared file system only the writer's fsync counts
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        errors = gather_object([error])
    if not any(errors) and acc.is_main_process:
        try:
            if final.exists():  # same step saved before a crash: the new copy wins
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync(state_dir)  # the rename itself
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        errors = [error]
    errors = broadcast_object_list([[e for e in errors if e]])[0]
    if errors:
        free = _free(state_dir)  # before the partial files are removed
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        before = latest(state_dir)
        raise ArtclfError(
            f"{state_dir}: saving step {step} failed ({errors[0]}{free}); its partial files are "
            "removed and the "
            f"newest checkpoint is still {before.name if before else 'none (a rerun starts over)'}: "
            "free space or fix the folder, then rerun the same command to resume from it"
        )
    if acc.is_main_process:
        for old in checkpoints(state_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def resume(acc: Accelerator, state_dir: Path, state: TrainState) -> Path | None:
    """Load the newest checkpoint that loads on every rank (None: start fresh).

    The main process lists ``state_dir`` and broadcasts the names; each candidate is loaded by
    every rank, the outcome is gathered, and a failure anywhere moves everyone to the one
    before. No checkpoint at all is a fresh start; checkpoints none of which load is an error
    (starting over would overwrite the run's history).
    """
    names = [[p.name for p in checkpoints(state_dir)] if acc.is_main_process else None]
    broadcast_object_list(names)
    for name in reversed(names[0]):
        path = state_dir / name
        try:
            acc.load_state(str(path))
            error = None if state.step == int(name[5:]) else f"holds step {state.step}, not {int(name[5:])}"
        except Exception as e:  # a torn file raises anything from EOFError to a safetensors error
            error = f"{type(e).__name__}: {e}"
        errors = [e for e in gather_object([error]) if e]
        if not errors:
            steps = gather_object([state.step])
            if len(set(steps)) != 1:
                raise ArtclfError(f"{path}: ranks resumed at different steps {steps}")
            return path
        acc.print(f"{path}: does not load ({errors[0]}); falling back to the checkpoint before it")
    if names[0]:
        raise ArtclfError(
            f"{state_dir}: none of {names[0]} loads; move the folder away to start over, or fix it"
        )
    return None


def _free(folder: Path) -> str:
    """How much room the folder's file system has left: torch.save reports a full disk as
    ``unexpected pos …``, without the errno."""
    try:
        return f"; {shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
    except OSError:
        return ""


def _fsync_files(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync(Path(root))


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
