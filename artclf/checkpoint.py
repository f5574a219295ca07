"""Training state on disk: ``RUN/state/step-00001234/`` written atomically, last K kept.

``accelerator.save_state`` writes into ``state/.tmp-step-…`` on every rank; once all ranks
are done, the main process renames it to ``state/step-…`` (a rename is atomic), then drops
the oldest beyond ``keep``. A folder under its final name is therefore complete, and the
newest one is where a restarted job resumes.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """Counters saved with every checkpoint (``register_for_checkpointing``)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # optimizer steps done in the epoch under way
    best_f1: float = -1.0
    best_epoch: int = -1

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
    """Save model, optimizer, scaler, RNG and registered objects; atomic; keep the last ``keep``."""
    final = state_dir / f"step-{step:08d}"
    tmp = state_dir / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():  # same step saved before a crash: the new copy wins
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(state_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final
