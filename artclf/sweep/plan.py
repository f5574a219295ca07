"""``artclf sweep plan FILE --runs DIR``: a grid × seeds of training runs, one run folder per point.

The sweep file (TOML)::

    [base]                      # train flags of every run (the CLI's names, '-' or '_')
    arch = "resnet50"
    epochs = 30
    [grid]                      # every combination of these values
    lr = [1e-4, 3e-4]
    seeds = [0, 1, 2]           # each config once per seed (default [0]); here or at the top,
                                # never after a [[grid.NAME]] (TOML would put it in that table)
    [[grid.loss]]               # a list of tables: values that go together (one axis)
    ce_weight = 0.3
    f1_weight = 0.7
    [[grid.loss]]
    ce_weight = 0.5
    f1_weight = 0.5

Every point's flags are checked by the trainer's own parser (``artclf.train.config``) here, so a
typo fails now, not in each task of an array job. ``--shards`` may stay out of ``[base]`` (the
launcher supplies it: SLURM's ``SHARDS``, the Kubernetes ConfigMap); ``--run`` is the sweep's:
``DIR/<name>``. Writes, each file atomically and ``DIR/sweep.json`` last (a plan is complete
when it exists):

    DIR/sweep.json          the file's base, grid and seeds, and every point
    DIR/points.txt          one run folder name per line: line i is array index i
    DIR/<name>/sweep.json   that point; DIR/<name>/args: its train flags, one CLI token a line
                            (no --run: the launcher passes ``--run DIR/<name>``)

Names come from the varied values (``lr-0.0001_ce-weight-0.3_seed-0``); a point's ``config`` is
its name without the seed (the group of the mean over seeds). Points run config-major, then
seed. The same file again is a no-op; another file into a planned DIR needs ``--force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from artclf.atomic import atomic_open, write_json
from artclf.config import arg, parse
from artclf.errors import ArtclfError
from artclf.train.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP = ("base", "grid", "seeds")
# set by the sweep itself, never by the file
RESERVED = {
    "run": "the sweep names each point's run folder (DIR/<name>)",
    "seed": "list the seeds in the top-level `seeds = [...]`",
}
PLAN, POINTS, ARGS = "sweep.json", "points.txt", "args"
SHARDS_PLACEHOLDER = "SHARDS"  # checks a point whose --shards the launcher supplies


@dataclass(frozen=True)
class PlanConfig:
    file: Path = field(metadata=arg("sweep file (TOML): [base], [grid], seeds", positional=True))
    runs: Path = field(metadata=arg("sweep folder: sweep.json, points.txt, a run folder per point"))
    force: bool = field(
        default=False,
        metadata=arg("replace the plan of another sweep file in --runs (points that stay keep their runs)"),
    )


def flag_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _key(path: Path, where: str, key: str) -> str:
    """A flag name as the file wrote it -> the config's field name, checked."""
    name = key.replace("-", "_")
    if name in RESERVED:
        raise ArtclfError(f"{path}: {where} {key}: {RESERVED[name]}")
    if name not in flag_names():
        raise ArtclfError(f"{path}: {where} {key}: not a flag of artclf train (see artclf train --help)")
    return name


def _value(path: Path, where: str, value):
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and "\n" not in value:
        return value
    raise ArtclfError(f"{path}: {where}: a flag takes one number, string or boolean, got {value!r}")


def _flags(path: Path, where: str, table: dict) -> dict:
    out: dict = {}
    for key, value in table.items():
        name = _key(path, where, key)
        if name in out:
            raise ArtclfError(f"{path}: {where} sets {name} twice ('-' and '_' spell the same flag)")
        out[name] = _value(path, f"{where} {key}", value)
    return out


def _axis(path: Path, key: str, values) -> list[dict]:
    """One grid key -> its assignments (each a dict of flag -> value), duplicates refused."""
    where = f"[grid] {key}"
    if not isinstance(values, list) or not values:
        raise ArtclfError(f"{path}: {where}: expected a non-empty list of values")
    if all(isinstance(v, dict) for v in values):  # [[grid.NAME]]: values that go together
        if any("seeds" in v for v in values):
            raise ArtclfError(
                f"{path}: {where}: seeds belongs before the first [[grid.{key}]] (TOML puts a key "
                "in the table above it)"
            )
        axis = [_flags(path, where, v) for v in values]
        if len({tuple(a) for a in axis}) != 1 or not axis[0]:
            raise ArtclfError(f"{path}: {where}: every table must set the same flags")
    else:
        name = _key(path, "[grid]", key)
        axis = [{name: _value(path, where, v)} for v in values]
    seen = set()
    for a in axis:
        frozen = json.dumps(a, sort_keys=True)
        if frozen in seen:
            raise ArtclfError(f"{path}: {where}: {a} is listed twice (duplicate points)")
        seen.add(frozen)
    return axis


def read(path: Path) -> tuple[dict, dict[str, list[dict]], dict, list[int]]:
    """The sweep file -> (base flags, grid axes, the grid as written, seeds), every key checked.
    An axis is a list of assignments (flag -> value): one flag each, or a table's flags."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ArtclfError(f"{path}: cannot read the sweep file: {e}") from None
    unknown = sorted(set(table) - set(TOP))
    if unknown:
        raise ArtclfError(f"{path}: unknown key(s) {unknown}; a sweep file holds {list(TOP)}")
    for name in ("base", "grid"):
        if not isinstance(table.get(name, {}), dict):
            raise ArtclfError(f"{path}: {name} must be a table ([{name}])")
    base = _flags(path, "[base]", table.get("base", {}))
    grid_table = dict(table.get("grid", {}))
    if "seeds" in grid_table:  # `seeds = [...]` written under [grid] lands in it (TOML)
        if "seeds" in table:
            raise ArtclfError(f"{path}: seeds is set at the top and in [grid]: keep one")
        table["seeds"] = grid_table.pop("seeds")
    grid = {key: _axis(path, key, values) for key, values in grid_table.items()}
    as_file = {  # the grid as the file wrote it, names normalised: for sweep.json
        key: [next(iter(a.values())) for a in axis] if not isinstance(grid_table[key][0], dict) else axis
        for key, axis in grid.items()
    }
    owner: dict[str, str] = {}
    for key, axis in grid.items():
        for name in axis[0]:
            if name in base:
                raise ArtclfError(f"{path}: {name} is set in [base] and in [grid] {key}: keep one")
            if name in owner:
                raise ArtclfError(f"{path}: {name} is in [grid] {owner[name]} and [grid] {key}: keep one")
            owner[name] = key
    seeds = table.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise ArtclfError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ArtclfError(f"{path}: seeds: {seeds} lists a seed twice (duplicate points)")
    return base, grid, as_file, seeds


def text(value) -> str:
    """A value as the CLI takes it (floats as repr: 0.0003, 1e-05)."""
    return repr(value) if isinstance(value, float) else str(value)


def tokens(flags: dict) -> list[str]:
    """Flags -> CLI tokens: ``--lr 0.0003``; booleans ``--compile`` / ``--no-compile``."""
    out = []
    for name, value in flags.items():
        opt = name.replace("_", "-")
        out += (
            [f"--{opt}" if value else f"--no-{opt}"] if isinstance(value, bool) else [f"--{opt}", text(value)]
        )
    return out


def _part(assignment: dict) -> str:
    """``{"ce_weight": 0.3}`` -> ``ce-weight-0.3``: readable and file-system safe."""
    parts = []
    for name, value in assignment.items():
        opt = name.replace("_", "-")
        part = (opt if value else f"no-{opt}") if isinstance(value, bool) else f"{opt}-{text(value)}"
        parts.append(re.sub(r"[^A-Za-z0-9.+-]+", "-", part))
    return "_".join(parts)


def check(path: Path, name: str, args: list[str], has_shards: bool) -> TrainConfig:
    """The trainer's parser on a point's flags (with placeholders for what the launcher adds)."""
    argv = [*args, "--run", f"RUNS/{name}"] + ([] if has_shards else ["--shards", SHARDS_PLACEHOLDER])
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(TrainConfig, argv, "artclf train")
    except SystemExit:
        said = (err.getvalue().strip().splitlines() or ["exit 2"])[-1]
        raise ArtclfError(f"{path}: point {name} ({' '.join(args)}): {said}") from None


def expand(path: Path) -> dict:
    """The sweep file -> the plan written to ``DIR/sweep.json`` (every point checked)."""
    base, grid, as_file, seeds = read(path)
    points, names = [], {}
    for combo in itertools.product(*grid.values()):
        config = "_".join(_part(a) for a in combo) or "base"
        for seed in seeds:
            flags = {**base, **{k: v for a in combo for k, v in a.items()}, "seed": seed}
            name = f"{config}_seed-{seed}" if combo else f"seed-{seed}"
            if name in names:
                raise ArtclfError(f"{path}: points {names[name]} and {flags} are both named {name}")
            names[name] = flags
            args = tokens(flags)
            check(path, name, args, "shards" in base)
            point = {"index": len(points), "name": name, "config": config, "seed": seed}
            points.append({**point, "flags": flags, "args": args})
    return {"file": str(path), "base": base, "grid": as_file, "seeds": seeds, "points": points}


def same_plan(a: dict, b: dict) -> bool:
    """Two plans of the same points (the file's path may be spelled another way)."""
    return all(a.get(k) == b.get(k) for k in ("base", "grid", "seeds", "points"))


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtclfError(
            f"{path}: unreadable ({type(e).__name__}: {e}); move it away and plan again"
        ) from None


def _check_folder(folder: Path, point: dict) -> None:
    """A point's folder may be new, or this point's; never another run's."""
    mine = folder / PLAN
    if mine.is_file():
        before = _load(mine)
        if before.get("flags") != point["flags"] and (folder / "config.json").exists():
            raise ArtclfError(
                f"{folder}: holds a run trained with other flags ({before.get('args')}); move it away "
                "or plan into another --runs"
            )
    elif folder.is_dir() and any(folder.iterdir()):
        raise ArtclfError(f"{folder}: exists and is no point of a sweep; move it away or use another --runs")


def write(runs: Path, sweep: dict) -> None:
    for point in sweep["points"]:
        _check_folder(runs / point["name"], point)
    for point in sweep["points"]:
        folder = runs / point["name"]
        write_json(folder / PLAN, point)
        with atomic_open(folder / ARGS) as f:
            f.write("".join(f"{t}\n" for t in point["args"]))
    with atomic_open(runs / POINTS) as f:
        f.write("".join(f"{p['name']}\n" for p in sweep["points"]))
    write_json(runs / PLAN, sweep)  # last: the plan is complete once this exists


def plan(cfg: PlanConfig) -> dict:
    sweep = expand(cfg.file)
    existing = cfg.runs / PLAN
    before = None
    if existing.is_file():
        before = _load(existing)
        if not same_plan(before, sweep) and not cfg.force:
            raise ArtclfError(
                f"{cfg.runs} holds the plan of another sweep ({before.get('file')}); plan into another "
                "--runs, or pass --force to replace it (points that stay keep their runs)"
            )
    if before is None or not same_plan(before, sweep):
        write(cfg.runs, sweep)
        dropped = sorted(
            {p["name"] for p in (before or {}).get("points", [])} - {p["name"] for p in sweep["points"]}
        )
        if dropped:
            print(f"replaced the plan of {before.get('file')}: no longer in it: {', '.join(dropped)}")
    for p in sweep["points"]:
        print(p["index"], p["name"])
    n = len(sweep["points"])
    print(f"{n} runs in {cfg.runs}: sbatch --array=0-{n - 1} slurm/sweep.sbatch (RUNS={cfg.runs})")
    return sweep
