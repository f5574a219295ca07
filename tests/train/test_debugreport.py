"""``artclf debug RUN`` on the evidence of real hangs: every stack comes from ``faulthandler`` in a
real process whose main thread is blocked while other threads run (a stand-in rank, or two gloo
ranks of which one never joins the all-reduce); only the ``key: value`` header above it is
written here, as the trainer writes it. A rank that is SIGSTOPped writes nothing and must be
named; the rank at the lowest step, or in a phase the others are not in, is behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from artclf import cli
from artclf.train.debugreport import ANALYSER, main, parse, report
from tests.support import procs

STAMP = "20250105T101500Z"

# A stand-in rank: the main thread waits for peers that never come (as in a collective), a
# loader thread waits for data, and the stall watch, once GO exists, writes every thread's stack
# with faulthandler and ends the process. It lives in an `artclf/train/` folder, so its frames
# are artclf's (`stand-in.py`: no module can have that name, so docs/debugging.md, which quotes
# its report, names no module that does not exist).
STAND_IN = """
import faulthandler, os, queue, sys, threading, time
out, go = sys.argv[1], sys.argv[2]

def watch():
    while not os.path.exists(go):
        time.sleep(0.05)
    with open(out + ".part", "w") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
    os.replace(out + ".part", out)
    os._exit(0)

def wait_for_peers():
    threading.Event().wait()

def train_one_epoch():
    wait_for_peers()

threading.Thread(target=queue.Queue().get, daemon=True, name="loader").start()
threading.Thread(target=watch, daemon=True, name="artclf-stall-watch").start()
with open(out + ".main", "w") as f:
    f.write(f"0x{threading.main_thread().ident:016x}")
train_one_epoch()
"""


def header(rank: int, world: int, **fields: object) -> str:
    """The trainer's header (artclf/train/hangs.py), then the blank line."""
    values = {
        "rank": f"{rank} of {world}",
        "host": f"node-{rank}",
        "pid": 4000 + rank,
        "time": "2025-01-05T10:16:15+00:00",
        "reason": "no progress for 61 s (--stall-timeout 60 s), train: step check all-reduce",
        "step": 120,
        "epoch": 3,
        "phase": "train: step check all-reduce",
        "last_progress_s_ago": 61.0,
    } | fields
    return "".join(f"{k}: {v}\n" for k, v in values.items() if v is not None) + "\n"


def hang(tmp_path: Path, world: int, stopped: tuple[int, ...] = ()) -> dict[int, tuple[str, str]]:
    """Start WORLD stand-in ranks, SIGSTOP those in STOPPED, then ask every rank for its stacks;
    {rank: (faulthandler's dump, main thread id)} of the ranks that could write."""
    script = tmp_path / "src" / "artclf" / "train" / "stand-in.py"
    script.parent.mkdir(parents=True)
    script.write_text(STAND_IN)
    go, outs = tmp_path / "go", [tmp_path / f"stacks-{r}" for r in range(world)]
    with contextlib.ExitStack() as stack:
        ranks = [
            stack.enter_context(procs.running([sys.executable, str(script), str(o), str(go)])) for o in outs
        ]
        for p, o in zip(ranks, outs, strict=True):
            procs.wait_for(lambda o=o: Path(f"{o}.main").exists(), 60, "the stand-in rank's start", p)
        for r in stopped:
            os.kill(ranks[r].pid, signal.SIGSTOP)  # as `kill -STOP` or a debugger would: it cannot write
        go.touch()
        for r, p in enumerate(ranks):
            if r not in stopped:
                assert p.wait(timeout=60) == 0, procs.output(p)
        assert not any(outs[r].exists() for r in stopped)
    return {r: (o.read_text(), Path(f"{o}.main").read_text()) for r, o in enumerate(outs) if o.exists()}


def attempt(run: Path, stamp: str = STAMP) -> Path:
    folder = run / "debug" / stamp
    folder.mkdir(parents=True)
    return folder


def test_a_stopped_rank_is_named_and_each_main_thread_found(tmp_path):
    dumps = hang(tmp_path, world=3, stopped=(1,))
    folder = attempt(tmp_path / "run")
    for r, (stacks, main_thread) in dumps.items():
        (folder / f"rank-{r}.txt").write_text(header(r, 3, main_thread=main_thread) + stacks)
    text = report(folder)
    assert text.splitlines()[0] == f"{folder}: 2 of 3 ranks wrote their stacks"
    assert "rank 1: wrote no file" in text
    assert "at step" not in text and "while" not in text  # the two that wrote agree
    lines = text.splitlines()
    for r in (0, 2):
        (i,) = [i for i, line in enumerate(lines) if line.startswith(f"rank {r} (node-{r} pid {4000 + r}): ")]
        assert "step 120, epoch 3, 61 s since progress, phase 'train: step check all-reduce'" in lines[i]
        # the main thread's innermost artclf frame, not the watch thread that wrote the dump
        assert lines[i + 1].startswith("    main thread at artclf/train/stand-in.py:"), lines[i + 1]
        assert lines[i + 1].endswith(" in wait_for_peers"), lines[i + 1]
    assert "no nccl-rank-<r> file" in text


def test_the_lowest_step_and_an_odd_phase_are_behind(tmp_path):
    dumps = hang(tmp_path, world=3)
    folder = attempt(tmp_path / "run")
    late = {"step": 118, "phase": "waiting for data", "reason": "no progress for 75 s (--stall-timeout 60 s)"}
    for r, (stacks, main_thread) in dumps.items():
        fields = late if r == 2 else {}
        (folder / f"rank-{r}.txt").write_text(header(r, 3, main_thread=main_thread, **fields) + stacks)
    text = report(folder)
    assert "wrote no file" not in text
    lines = text.splitlines()
    assert lines[lines.index("behind:") + 1 :] == [
        "  rank 2: at step 118, others up to 120",
        "  rank 2: in 'waiting for data' while 2 other(s) are in 'train: step check all-reduce'",
        "NCCL Flight Recorder: no nccl-rank-<r> file (written on an NCCL collective timeout)",
    ]


def test_the_main_thread_is_found_without_its_id(tmp_path):
    """An older header without `main_thread`: the main thread is the one threading did not start."""
    (stacks, main_thread), *_ = hang(tmp_path, world=1).values()
    folder = attempt(tmp_path / "run")
    (folder / "rank-0.txt").write_text(header(0, 1) + stacks)
    dump = parse(folder / "rank-0.txt")
    assert len(dump.threads) == 3  # main, loader, the watch that wrote it
    assert dump.main_frames() == dump.threads[int(main_thread, 16)]
    assert "main thread at artclf/train/stand-in.py:" in report(folder)


def test_cli_reads_the_newest_attempt_or_the_one_named(tmp_path, capsys):
    (stacks, main_thread), *_ = hang(tmp_path, world=1).values()
    run = tmp_path / "run"
    older = attempt(run, "20250104T080000Z")
    (older / "rank-0.txt").write_text(header(0, 2, main_thread=main_thread, step=7) + stacks)
    newest = attempt(run)
    (newest / "rank-1.txt").write_text(header(1, 2, main_thread=main_thread) + stacks)
    assert cli.main(["debug", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{newest}: 1 of 2 ranks wrote their stacks") and "rank 0: wrote no file" in out
    assert main([str(run), "--stamp", "20250104T080000Z"]) == 0
    assert "rank 0 (node-0 pid 4000): step 7" in capsys.readouterr().out
    assert main([str(run), "--stamp", "20250101T000000Z"]) == 1
    assert "no such attempt; there are 20250104T080000Z, 20250105T101500Z" in capsys.readouterr().err


def test_cli_says_where_evidence_would_be(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main([str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'debug'}: no hang evidence" in err and "--stall-timeout" in err


# Two gloo ranks: rank 0 enters the all-reduce of step 3, rank 1 stays in step 2 (its "save"). Each
# one's stall watch writes the header (as the trainer does), every thread's stack, and the
# Flight Recorder's buffer (torch records gloo collectives too) as nccl-rank-<r>.
GLOO = """
import datetime, faulthandler, os, sys, threading, time
import torch, torch.distributed as dist
from torch._C._distributed_c10d import _dump_fr_trace
rank, folder, store = int(sys.argv[1]), sys.argv[2], dist.FileStore(sys.argv[3], 2)
dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
state = {"step": 2, "phase": "save"}

def watch():
    time.sleep(4)
    with open(os.path.join(folder, f"nccl-rank-{rank}"), "wb") as f:
        f.write(_dump_fr_trace())
    path = os.path.join(folder, f"rank-{rank}.txt")
    with open(path + ".part", "w") as f:
        f.write(f"rank: {rank} of 2\\nstep: {state['step']}\\nepoch: 1\\nphase: {state['phase']}\\n")
        f.write(f"main_thread: 0x{threading.main_thread().ident:016x}\\n\\n")
        f.flush()
        faulthandler.dump_traceback(file=f, all_threads=True)
    os.replace(path + ".part", path)
    # the first rank to exit closes its gloo connections, and the other's all-reduce raises
    # (caught in step_check, which then waits for this exit)
    while not all(os.path.exists(os.path.join(folder, f"rank-{r}.txt")) for r in (0, 1)):
        time.sleep(0.05)
    os._exit(0)

def step_check():
    state["step"], state["phase"] = 3, "train: step check all-reduce"
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError:  # rank 1 left once both files were written: let the watcher exit 0
        time.sleep(60)

def save():
    time.sleep(60)

threading.Thread(target=watch, daemon=True).start()
dist.all_reduce(torch.ones(1))
step_check() if rank == 0 else save()
"""


@pytest.mark.slow
def test_a_real_gloo_hang(tmp_path):
    script = tmp_path / "src" / "artclf" / "train" / "gloo_rank.py"
    script.parent.mkdir(parents=True)
    script.write_text(GLOO)
    folder = attempt(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmds = [
        {"cmd": [sys.executable, str(script), str(r), str(folder), str(tmp_path / "store")], "env": env}
        for r in (0, 1)
    ]
    results = procs.run_together(cmds, timeout=120)
    assert [rc for rc, _ in results] == [0, 0], "\n".join(out[-3000:] for _, out in results)
    text = report(folder)
    lines = text.splitlines()
    (i,) = [i for i, line in enumerate(lines) if line.startswith("rank 0 ")]
    assert "step 3" in lines[i] and "'train: step check all-reduce'" in lines[i]
    # the innermost torch frame (the all-reduce waits in C++ below it), then ours
    assert lines[i + 1].startswith("    main thread at torch/distributed/distributed_c10d.py:"), lines[i + 1]
    assert " in all_reduce <- artclf/train/gloo_rank.py:" in lines[i + 1] and lines[i + 1].endswith(
        "step_check"
    )
    assert "  rank 1: at step 2, others up to 3" in lines
    assert "NCCL Flight Recorder: ranks 0, 1; which collective each rank waits in:" in lines
    assert f"  {ANALYSER} {folder} --prefix nccl-rank-" in lines  # every rank's trace: complete


def test_an_attempt_where_no_rank_wrote(tmp_path, capsys):
    """Every rank killed at once: only NCCL's dumps are there (here empty files: only their names
    are read), and the analyser is told that ranks are missing."""
    folder = attempt(tmp_path / "run")
    for r in (0, 1):
        (folder / f"nccl-rank-{r}").write_bytes(b"")
    assert main([str(folder)]) == 0  # an attempt's own folder works too
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"{folder}: 0 of ? ranks wrote their stacks",
        "behind: every rank, or none: no rank could write (all stopped or killed?)",
    ]
    assert lines[-1] == f"  {ANALYSER} {folder} --prefix nccl-rank- --allow-incomplete-ranks"
