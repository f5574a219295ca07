"""Config parsing: flags, TOML, unknown keys, validation; the CLI's stage table."""

from __future__ import annotations

import importlib
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path

import pytest

from artclf import cli
from artclf.config import arg, floats, parse, to_dict
from artclf.errors import ArtclfError


@dataclass(frozen=True)
class Demo:
    src: Path = field(metadata=arg("input", positional=True))
    size: int = field(default=512, metadata=arg("px"))
    ratios: tuple[float, ...] = field(default=(0.8, 0.2), metadata=arg("fractions", parse=floats))
    quirks: bool = field(default=True, metadata=arg("plant odd files"))

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"--size must be > 0, got {self.size}")


def test_flags_fill_and_freeze():
    cfg = parse(Demo, ["in", "--size", "64", "--ratios", "0.5,0.5", "--no-quirks"], "t")
    assert cfg == Demo(src=Path("in"), size=64, ratios=(0.5, 0.5), quirks=False)
    with pytest.raises(FrozenInstanceError):
        cfg.size = 1  # type: ignore[misc]
    assert to_dict(cfg) == {"src": "in", "size": 64, "ratios": [0.5, 0.5], "quirks": False}


def test_defaults_when_no_flags():
    assert parse(Demo, ["x"], "t") == Demo(src=Path("x"))


def test_toml_then_flags_win(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("size = 128\nratios = [0.7, 0.3]\nquirks = false\n")
    cfg = parse(Demo, ["x", "--config", str(toml), "--size", "32"], "t")
    assert (cfg.size, cfg.ratios, cfg.quirks) == (32, (0.7, 0.3), False)


def test_toml_unknown_key_is_an_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("sise = 3\n")
    with pytest.raises(ArtclfError, match=r"c\.toml: unknown setting\(s\) \['sise'\]"):
        parse(Demo, ["x", "--config", str(toml)], "t")


def test_validation_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse(Demo, ["x", "--size", "0"], "t")
    assert e.value.code == 2
    assert "--size must be > 0, got 0" in capsys.readouterr().err


def test_every_stage_has_a_main():
    for stage, (module, _) in cli.STAGES.items():
        assert callable(importlib.import_module(module).main), stage


def test_unknown_stage_and_version(capsys):
    assert cli.main(["nope"]) == 2
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("artclf ")


@dataclass(frozen=True)
class Many:
    model: Path = field(metadata=arg("model"))
    inputs: tuple[Path, ...] = field(metadata=arg("files", positional=True, many=True))


def test_positional_with_many_values_becomes_a_tuple():
    cfg = parse(Many, ["a.jpg", "--model", "m.pt", "b/"], "t")
    assert cfg == Many(model=Path("m.pt"), inputs=(Path("a.jpg"), Path("b/")))
    with pytest.raises(SystemExit):
        parse(Many, ["--model", "m.pt"], "t")  # at least one input
