"""The house in rooms (docs/design.md, "The map"): the import contracts of pyproject.toml hold and
catch what they are meant to catch, modules and folders stay small, and the docs name only
modules that exist.

The contracts are checked by `lint-imports` itself (`make lint` runs it on the tree); here each
one is also broken on purpose, in a copy of the package, to show that it fails when it should.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
MAX_LINES, MAX_MODULES = 400, 24


@pytest.fixture(scope="module")
def house(tmp_path_factory) -> Path:
    """A copy of artclf/ and pyproject.toml, to break."""
    root = tmp_path_factory.mktemp("house")
    shutil.copytree(REPO / "artclf", root / "artclf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def lint_imports(root: Path, *args: str) -> subprocess.CompletedProcess:
    # lint-imports puts its working folder first on sys.path: the copy is the artclf it reads
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [str(LINT_IMPORTS), "--no-cache", *args]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_contracts_hold_on_the_copy(house):
    res = lint_imports(house)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 kept, 0 broken" in res.stdout, res.stdout


def test_the_three_lists_of_stages_agree():
    """The stage layer, the independence contract and the front doors name the stages three
    times (import-linter has no references): a stage added to one list and not the others would
    go unchecked by the contract that missed it."""
    with open(REPO / "pyproject.toml", "rb") as f:
        contracts = {c["id"]: c for c in tomllib.load(f)["tool"]["importlinter"]["contracts"]}
    stages = {f"artclf.{m.strip()}" for m in contracts["layers"]["layers"][2].split(":")}
    assert "artclf.train" in stages and "artclf.data" not in stages, "layers[2] is no longer the stage layer"
    assert set(contracts["stages"]["modules"]) == stages
    rooms = {m for m in stages if (REPO / m.replace(".", "/") / "__init__.py").is_file()}
    assert set(contracts["front-doors"]["protected_modules"]) == rooms


# (contract id, file, line added, what the output must name)
BREAKS = {
    "a shared module imports a stage": (
        "layers",
        "data.py",
        "from artclf.train import preemption  # noqa",
        "artclf.data is not allowed to import artclf.train",
    ),
    "a module no layer names": ("layers", "newcomer.py", "", "artclf.newcomer"),
    "a stage imports another stage": (
        "stages",
        "export.py",
        "from artclf import predict  # noqa",
        "artclf.export is not allowed to import artclf.predict",
    ),
    "two modules of a room import each other": (
        "acyclic",
        "dedup/groups.py",
        "from artclf.dedup import stage  # noqa",
        "No cycles are allowed in artclf.dedup",
    ),
    "a cycle through a type hint": (
        "acyclic",
        "dedup/report.py",
        "if TYPE_CHECKING:\n    from artclf.dedup.stage import dedup  # noqa",
        "No cycles are allowed in artclf.dedup",
    ),
    "a room's module imports its front door": (
        "front-doors",
        "dedup/stage.py",
        "from artclf.dedup import DedupConfig as _Front  # noqa",
        "artclf.dedup.stage -> artclf.dedup",
    ),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_each_contract_fails_when_broken(house, case):
    contract, rel, line, named = BREAKS[case]
    path = house / "artclf" / rel
    before = path.read_text() if path.exists() else None
    path.write_text((before or '"""A module nobody placed."""\n') + "\n" + line + "\n")
    try:
        res = lint_imports(house, "--contract", contract)
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
    assert res.returncode == 1, res.stdout + res.stderr
    assert named in res.stdout, res.stdout


def test_modules_and_rooms_stay_small():
    big = {}
    for f in (REPO / "artclf").rglob("*.py"):
        n = len(f.read_text().splitlines())
        if n > MAX_LINES:
            big[str(f.relative_to(REPO))] = n
    assert not big, f"modules over {MAX_LINES} lines: {big}; split them by what they hold"
    crowded = {
        str(d.relative_to(REPO)): n
        for d in [REPO / "artclf", *(p for p in (REPO / "artclf").rglob("*") if p.is_dir())]
        if (n := len(list(d.glob("*.py")))) > MAX_MODULES
    }
    assert not crowded, f"folders of more than {MAX_MODULES} modules: {crowded}; give a stage a room"


DOCS = ["README.md", "docs", "slurm", "k8s", "launch", "Dockerfile"]
# `artclf.<suffix>` in these is a file name, not a module: artclf.egg-info, the enroot image artclf.sqsh
FILE_NAMES = {"egg", "sqsh"}


def resolves(dotted: str) -> bool:
    """``artclf.a.b.c`` names a module, or an attribute chain of the longest module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def git_grep(pattern: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["git", "grep", "-n", "-o", "-E", pattern, "--", *DOCS], cwd=REPO, capture_output=True, text=True
    ).stdout
    rows = (line.split(":", 2) for line in out.splitlines())  # file:line:match
    return [(f"{file}:{n}", match) for file, n, match in rows]


def test_docs_name_only_modules_that_exist():
    dotted = git_grep(r"artclf\.[a-z_][a-zA-Z0-9_.]*")
    assert dotted, "git grep found no module reference at all: is this a git checkout?"
    names = [(where, name.rstrip(".")) for where, name in dotted]
    missing = [
        f"{where}: {name}"
        for where, name in names
        if name.split(".")[1] not in FILE_NAMES and not resolves(name)
    ]
    # `git show REV:artclf/engine.py` names a file of an older commit: not a path of this tree
    paths = git_grep(r"([0-9a-f]{7,40}:)?artclf/[a-z_/]+\.(py|html)")
    missing += [f"{where}: {p}" for where, p in paths if ":" not in p and not (REPO / p).is_file()]
    assert not missing, "docs name modules or files that do not exist:\n" + "\n".join(missing)


ROOMS = sorted(p.parent.name for p in (REPO / "artclf").glob("*/__main__.py"))


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_runs_as_a_module(room, monkeypatch, capsys):
    """`python -m artclf.<room>` (and so `accelerate launch -m artclf.train`) runs the stage, and
    the CLI names the room, not a module inside it. runpy is what `python -m` runs; in-process
    it costs no new interpreter."""
    from artclf.cli import STAGES

    assert f"artclf.{room}" in {module for module, _ in STAGES.values()}
    monkeypatch.setattr(sys, "argv", [f"artclf.{room}", "--help"])
    # train's main points faulthandler at stderr's file descriptor first: pytest's capture has none
    monkeypatch.setattr(faulthandler, "enable", lambda **_: None)
    with pytest.raises(SystemExit) as stop:
        runpy.run_module(f"artclf.{room}", run_name="__main__", alter_sys=True)
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: artclf ")
