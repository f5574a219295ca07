"""Stage configs: frozen dataclasses filled from CLI flags and, optionally, a TOML file.

Each stage declares one dataclass whose defaults reproduce the published recipe. Fields
carry their help text (with units) in ``field(metadata=...)``; :func:`parse` turns the
class into an argparse parser, so a setting is written down exactly once. Precedence:
defaults < ``--config FILE.toml`` < flags. Unknown TOML keys are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from artclf.errors import ArtclfError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

C = TypeVar("C")


def arg(
    help: str, positional: bool = False, parse: Callable[[str], Any] | None = None, many: bool = False
) -> dict:
    """Field metadata: ``field(default=..., metadata=arg("help with units"))``; ``many``: a
    positional taking one or more values (the field is a tuple of them)."""
    return {"help": help, "positional": positional, "parse": parse, "many": many}


def floats(text: str) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def strings(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; empty text -> ``()``."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _base_type(tp: Any) -> Any:
    """``Path | None`` -> ``Path``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def build_parser(cls: type, prog: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        tp = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"help": meta["help"]}
        if f.default is not dataclasses.MISSING and f.default is not None:
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            kwargs["help"] += f" (default: {shown})"
        if meta.get("positional"):
            name = [f.name]
            if meta.get("many"):
                kwargs["nargs"] = "+"
                tp = typing.get_args(hints[f.name])[0]  # tuple[Path, ...] -> Path
            elif f.default is not dataclasses.MISSING:
                kwargs["nargs"] = "?"
        else:
            name = ["--" + f.name.replace("_", "-")]
            kwargs["required"] = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("parse") or tp
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(*name, **kwargs)
    parser.add_argument("--config", type=Path, help="TOML file with any of these settings (flags win)")
    return parser


def _from_toml(cls: type, path: Path) -> dict[str, Any]:
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ArtclfError(f"{path}: cannot read config: {e}") from None
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ArtclfError(f"{path}: unknown setting(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in table.items():
        tp = _base_type(hints[key])
        out[key] = tuple(value) if isinstance(value, list) else (Path(value) if tp is Path else value)
    return out


def parse(cls: type[C], argv: Sequence[str] | None, prog: str, description: str | None = None) -> C:
    """Flags (and ``--config``) -> a validated, frozen ``cls``. Exits 2 on bad flags."""
    parser = build_parser(cls, prog, description)
    ns = vars(parser.parse_intermixed_args(argv))  # `IMG --model M IMG2` works too
    values = _from_toml(cls, ns.pop("config")) if "config" in ns else {}
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()})
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as JSON-ready data (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def stage_main(
    cls: type[C],
    run: Callable[[C], Any],
    prog: str,
    description: str | None,
    argv: Sequence[str] | None = None,
) -> int:
    """The body of every stage's ``main``: parse, run, turn ArtclfError into exit 1; an int
    that ``run`` returns is the exit code (the trainer's 75 after a preemption)."""
    cfg = parse(cls, argv, prog, description)
    previous = warnings.formatwarning
    warnings.formatwarning = lambda msg, *_args, **_kw: f"{prog}: warning: {msg}\n"
    try:
        result = run(cfg)
    except ArtclfError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous  # a stage run in-process leaves the interpreter as it was
    return result if isinstance(result, int) else 0
