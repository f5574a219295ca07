"""``artclf debug RUN``: what every rank was doing when a job hung, read from the run folder.

A rank that hangs (a collective past ``--ddp-timeout``, no progress for ``--stall-timeout``)
writes ``RUN/debug/<stamp>/rank-<r>.txt`` before it goes: ``key: value`` header lines (rank,
host, pid, time, reason, step, epoch, phase, last_progress_s_ago, main_thread), a blank line,
then the exception's traceback, if any, and faulthandler's dump of every thread. NCCL's Flight
Recorder adds ``nccl-rank-<r>`` there. This reads the newest attempt's folder (or ``--stamp``)
and prints one line per rank, the frame its main thread waits in, the ranks that are behind
(no file at all, a lower step, another phase) and the command that analyses the NCCL traces.
It reads files only (no process group, no GPU): run it anywhere RUN is mounted.
docs/debugging.md reads a report.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from artclf.config import arg, stage_main
from artclf.errors import ArtclfError

DEBUG = "debug"  # RUN/debug/<stamp>/, as the trainer writes it
STAMP = re.compile(r"\d{8}T\d{6}Z")  # the attempt's UTC start, YYYYmmddTHHMMSSZ: sorts by time
RANK_FILE = re.compile(r"rank-(\d+)\.txt")
NCCL_PREFIX = "nccl-rank-"  # the trainer's TORCH_FR_DUMP_TEMP_FILE ends in it; torch appends the rank
NCCL_FILE = re.compile(re.escape(NCCL_PREFIX) + r"(\d+)")
# faulthandler: "Thread 0x00007f...(most recent call first):", "Current thread 0x..." for the
# thread that dumped, then '  File "PATH", line N in FUNC', innermost first
THREAD = re.compile(r"(Current thread|Thread) (0x[0-9a-fA-F]+)")
FRAME = re.compile(r'\s+File "(.*)", line (\d+) in (.*)')
PACKAGES = ("artclf", "torch")  # frames worth naming: ours, and the torch call we wait in
ANALYSER = "python -m torch.distributed.flight_recorder.fr_trace"


@dataclass(frozen=True)
class DebugConfig:
    run: Path = field(metadata=arg("run folder (the trainer's --run)", positional=True))
    stamp: str | None = field(
        default=None, metadata=arg("attempt to read, RUN/debug/STAMP (default: the newest)")
    )

    def __post_init__(self) -> None:
        if self.stamp and not STAMP.fullmatch(self.stamp):
            raise ValueError(f"--stamp must look like 20250105T101500Z (UTC), got {self.stamp!r}")


@dataclass(frozen=True)
class Frame:
    path: str
    line: int
    func: str

    def package(self) -> str | None:
        """``artclf`` or ``torch`` when the file lies in one of them (the innermost such folder)."""
        parts = Path(self.path).parts[:-1]
        return next((p for p in reversed(parts) if p in PACKAGES), None)

    def __str__(self) -> str:
        parts = Path(self.path).parts
        pkg = self.package()
        start = max(i for i, p in enumerate(parts[:-1]) if p == pkg) if pkg else len(parts) - 1
        return f"{'/'.join(parts[start:])}:{self.line} in {self.func}"


@dataclass
class RankDump:
    """One ``rank-<r>.txt``: its header and its threads' frames (innermost first)."""

    rank: int
    world: int | None
    header: dict[str, str]
    threads: dict[int, list[Frame]]  # thread ident -> frames

    def number(self, key: str) -> float | None:
        try:
            return float(self.header.get(key, ""))
        except ValueError:
            return None

    @property
    def step(self) -> int | None:
        step = self.number("step")
        return None if step is None else int(step)

    def main_frames(self) -> list[Frame] | None:
        """The main thread's frames: the header's ``main_thread`` id, else the one thread that
        was not started by ``threading`` (every other thread's outermost frame is its bootstrap)."""
        ident = self.header.get("main_thread", "")
        if re.fullmatch(r"0x[0-9a-fA-F]+", ident) and int(ident, 16) in self.threads:
            return self.threads[int(ident, 16)]
        roots = [f for f in self.threads.values() if f and not f[-1].func.startswith("_bootstrap")]
        return roots[0] if len(roots) == 1 else None


def parse(path: Path) -> RankDump:
    """A rank file: header lines up to the first blank line, then text; the thread blocks of
    faulthandler are read after the traceback (whose frames say ``line N, in``: no match)."""
    head, _, body = path.read_text(errors="replace").partition("\n\n")
    header = {
        k.strip(): v.strip() for k, sep, v in (line.partition(": ") for line in head.splitlines()) if sep
    }
    threads: dict[int, list[Frame]] = {}
    frames = None
    for line in body.splitlines():
        if m := THREAD.match(line):  # "Current thread" (the writer) may be the main thread or not
            frames = threads.setdefault(int(m[2], 16), [])
        elif frames is not None and (m := FRAME.fullmatch(line)):
            frames.append(Frame(m[1], int(m[2]), m[3]))
    own = int(RANK_FILE.fullmatch(path.name)[1])
    m = re.fullmatch(r"(\d+) of (\d+)", header.get("rank", ""))
    return RankDump(int(m[1]) if m else own, int(m[2]) if m else None, header, threads)


def where(frames: list[Frame] | None) -> str:
    """The innermost artclf or torch frame, and the innermost artclf frame when it is another."""
    if not frames:
        return "not found in the dump (read the file)"
    ours = [f for f in frames if f.package()]
    if not ours:
        return f"at {frames[0]}"
    artclf = next((f for f in ours if f.package() == "artclf"), None)
    tail = f" <- {artclf}" if artclf is not None and artclf is not ours[0] else ""
    return f"at {ours[0]}{tail}"


def attempt(run: Path, stamp: str | None = None) -> Path:
    """RUN/debug/STAMP, or the newest attempt's folder (RUN may be an attempt's folder itself);
    an error that says what is there."""
    if not run.is_dir():
        raise ArtclfError(f"{run}: no such run folder; pass the trainer's --run")
    if STAMP.fullmatch(run.name) and not stamp:
        return run
    root = run / DEBUG
    stamps = sorted(p.name for p in root.glob("*") if p.is_dir() and STAMP.fullmatch(p.name))
    if not stamps:
        raise ArtclfError(
            f"{root}: no hang evidence; a rank writes RUN/debug/<stamp>/rank-<r>.txt when a collective"
            " times out (--ddp-timeout) or it makes no progress for --stall-timeout s"
        )
    if stamp and stamp not in stamps:
        raise ArtclfError(f"{root / stamp}: no such attempt; there are {', '.join(stamps)}")
    return root / (stamp or stamps[-1])


def rank_line(d: RankDump) -> str:
    epoch, ago = d.number("epoch"), d.number("last_progress_s_ago")
    known = {
        "step": "?" if d.step is None else d.step,
        "epoch": "?" if epoch is None else int(epoch),
        "ago": "?" if ago is None else f"{ago:.0f}",
    }
    return (
        f"rank {d.rank} ({d.header.get('host', '?')} pid {d.header.get('pid', '?')}):"
        f" step {known['step']}, epoch {known['epoch']}, {known['ago']} s since progress,"
        f" phase {d.header.get('phase', '?')!r}, reason {d.header.get('reason', '?')!r}"
    )


def behind(dumps: list[RankDump], world: int | None) -> list[str]:
    """Ranks that look like the cause: no file, the lowest step, a phase the others are not in."""
    out = []
    if world is not None:
        have = {d.rank for d in dumps}
        out += [
            f"rank {r}: wrote no file: stopped, killed, its node lost, or stuck where Python cannot"
            " run; usually the culprit (see its log)"
            for r in range(world)
            if r not in have
        ]
    steps = {d.rank: d.step for d in dumps if d.step is not None}
    if steps and min(steps.values()) < max(steps.values()):
        low, high = min(steps.values()), max(steps.values())
        out += [f"rank {r}: at step {s}, others up to {high}" for r, s in sorted(steps.items()) if s == low]
    phases = Counter(d.header.get("phase", "?") for d in dumps)
    (common, n), *rest = phases.most_common() or [("", 0)]
    if rest and n > rest[0][1]:
        out += [
            f"rank {d.rank}: in {d.header.get('phase', '?')!r} while {n} other(s) are in {common!r}"
            for d in dumps
            if d.header.get("phase", "?") != common
        ]
    return out


def report(folder: Path) -> str:
    """The text ``artclf debug`` prints for one attempt's folder."""
    dumps = sorted((parse(p) for p in folder.iterdir() if RANK_FILE.fullmatch(p.name)), key=lambda d: d.rank)
    worlds = {d.world for d in dumps if d.world is not None}
    world = max(worlds) if worlds else None
    lines = [f"{folder}: {len(dumps)} of {world or '?'} ranks wrote their stacks"]
    if len(worlds) > 1:
        lines.append(f"  (the rank files disagree on the world size: {sorted(worlds)})")
    for d in dumps:
        lines += [rank_line(d), f"    main thread {where(d.main_frames())}"]
    suspects = behind(dumps, world)
    if not dumps:
        lines.append("behind: every rank, or none: no rank could write (all stopped or killed?)")
    elif not suspects:
        lines.append("behind: none by step or phase; compare the main threads above")
    else:
        lines.append("behind:")
    lines += [f"  {s}" for s in suspects]
    nccl = sorted(int(m[1]) for p in folder.iterdir() if (m := NCCL_FILE.fullmatch(p.name)))
    if not nccl:
        lines.append(
            f"NCCL Flight Recorder: no {NCCL_PREFIX}<r> file (written on an NCCL collective timeout)"
        )
        return "\n".join(lines)
    complete = world is not None and set(range(world)) <= set(nccl)
    cmd = f"{ANALYSER} {shlex.quote(str(folder))} --prefix {NCCL_PREFIX}"
    lines += [
        f"NCCL Flight Recorder: rank{'s' * (len(nccl) > 1)} {', '.join(map(str, nccl))};"
        " which collective each rank waits in:",
        f"  {cmd}" + ("" if complete else " --allow-incomplete-ranks"),
    ]
    return "\n".join(lines)


def debug(cfg: DebugConfig) -> int:
    print(report(attempt(cfg.run, cfg.stamp)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(DebugConfig, debug, "artclf debug", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
