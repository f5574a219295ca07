"""What a run folder's ``config.json`` promises, and whether a rerun may resume it.

A run is one recipe. Resuming it with flags that change what it computes (the architecture,
image size, batch, learning rate and schedule, loss weights, seed, the data, …) would train
on under another recipe and write it into the same record, so such a rerun is refused with
every difference named, unless ``--resume-with-changes``: then ``config.json`` keeps the
flags the run started with under ``config`` and lists each accepted change, with the step it
took effect at, under ``changes``. Flags that only change how the run executes (:data:`FREE`:
workers, intervals, timeouts, compilation, the shard set's URL) may change freely; the data
itself is compared by its index (:meth:`artclf.data.SampleIndex.digest`), so a copy of the
same shards elsewhere resumes and another data set does not.

A changed ``--epochs`` recomputes the cosine schedule for the new total: the learning rate
continues from the current step on the new curve (a jump if the run was already decaying).
A changed ``--batch-size`` or ``--grad-accum`` resumes at the same epoch and step of the new
order, so part of that epoch's samples may be seen twice or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from artclf.errors import ArtclfError

# Flags of TrainConfig that never change what the run computes (on CPU/gloo, bitwise; see
# docs/design.md for the GPU caveats of --compile and --channels-last).
FREE = frozenset(
    {
        "run",
        "shards",  # compared by the data's index digest instead (a copy elsewhere is the same data)
        "endpoint_url",
        "workers",
        "gpu_decode",
        "compile",
        "compile_backend",
        "channels_last",
        "save_every",
        "keep_last",
        "log_every",
        "check_every",
        "ddp_timeout",
        "max_failed_shards",
        "data_timeout",
        "storage_patience",
        "stall_timeout",
        "record_batches",
        "cache_dir",
        "resume_with_changes",
    }
)
# Changes no checkpoint survives: refused even with --resume-with-changes.
STRUCTURAL = frozenset({"arch"})


def effective(record: dict) -> dict:
    """The flags a run has now: those it started with, each accepted change applied."""
    flags = dict(record.get("config", {}))
    for change in record.get("changes", []):
        flags.update({k: new for k, (_old, new) in change["flags"].items()})
    return flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(path: Path, now: dict, data_digest: str, allow: bool, step: int) -> dict | None:
    """Compare the flags of a rerun (``now``, from ``to_dict``) with the run's ``config.json``
    at ``path``. Returns the change to record (None: nothing changed); raises
    :class:`ArtclfError` naming every difference when they are not allowed."""
    if not path.is_file():
        return None  # a run folder from before config.json: nothing to compare with
    record = json.loads(path.read_text())
    before = effective(record)
    diff = {k: (before.get(k), v) for k, v in now.items() if k not in FREE and k in before and before[k] != v}
    old_digest = record.get("derived", {}).get("train_index_sha256")
    data_changed = old_digest is not None and old_digest != data_digest
    if not diff and not data_changed:
        return None
    lines = [f"  {_flag(k)}: {old!r} in the run, {new!r} now" for k, (old, new) in diff.items()]
    if data_changed:
        lines.append(
            f"  the train shards: index sha256 {old_digest[:12]}… in the run, {data_digest[:12]}… now "
            "(another data set, or shards packed again)"
        )
    structural = sorted(STRUCTURAL & diff.keys())
    where = path.parent
    if structural or data_changed or not allow:
        if structural:
            cure = f"the checkpoints in {where / 'state'} hold {before.get('arch')!r} weights; "
        elif data_changed:
            cure = "a run trains on one data set; "
        else:
            cure = "pass --resume-with-changes to resume with them (recorded in config.json), or "
        raise ArtclfError(
            f"{where}: this run was started with other flags; resuming would train on under another "
            "recipe:\n" + "\n".join(lines) + f"\n{cure}start a new run with another --run"
        )
    return {"step": step, "flags": {k: [old, new] for k, (old, new) in diff.items()}}
