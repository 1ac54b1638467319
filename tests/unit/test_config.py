"""Configs become CLI flags with their docstrings as help, and come back intact."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from mechscope.config import add_arguments, field_docs, from_dict, from_namespace


@dataclass(frozen=True)
class Example:
    """An example config."""

    steps: int = 10
    """How many steps."""
    tol: float | None = None
    """Stop below this (None: never)."""
    old_tol: float | None = None
    """The same, spelled the old way."""
    arch: Literal["a", "b"] = "a"
    """Which one."""
    sizes: tuple[int, ...] = (1, 2)
    """Several sizes."""
    fast: bool = True
    """Go fast."""


def _parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p, Example)
    return p, from_namespace(Example, p.parse_args(argv))


def test_flags_types_and_defaults():
    _, cfg = _parse([])
    assert cfg == Example()
    _, cfg = _parse(
        ["--steps", "3", "--tol", "0.5", "--old-tol", "0.25", "--arch", "b", "--sizes", "4", "5", "--no-fast"]
    )
    assert cfg == Example(steps=3, tol=0.5, old_tol=0.25, arch="b", sizes=(4, 5), fast=False)
    assert isinstance(cfg.tol, float) and isinstance(cfg.sizes, tuple)


def test_help_is_the_field_docstring_and_choices_are_checked():
    p, _ = _parse([])
    assert "Stop below this (None: never)." in p.format_help()
    assert field_docs(Example)["arch"] == "Which one."
    with pytest.raises(SystemExit):
        p.parse_args(["--arch", "c"])


def test_from_dict_ignores_unknown_fields():
    assert from_dict(Example, {"steps": 7, "sizes": [3], "unknown": 1}) == Example(steps=7, sizes=(3,))


def test_contradicting_boolean_flags_are_a_usage_error(capsys):
    p = argparse.ArgumentParser(prog="x")
    add_arguments(p, Example)
    assert p.parse_args(["--fast", "--fast"]).fast is True  # repeating one form is harmless
    for argv in (["--fast", "--no-fast"], ["--no-fast", "--steps", "2", "--fast"]):
        with pytest.raises(SystemExit) as exit_info:
            p.parse_args(argv)
        assert exit_info.value.code == 2
        assert "contradict each other" in capsys.readouterr().err


@dataclass(frozen=True)
class Positive:
    """A config whose check refuses a value."""

    n: int = 1
    """Must be positive."""

    def __post_init__(self):
        if self.n <= 0:
            raise ValueError(f"n must be positive, got {self.n}")


def test_a_refused_value_is_a_usage_error():
    from mechscope.errors import UsageError

    p = argparse.ArgumentParser()
    add_arguments(p, Positive)
    with pytest.raises(UsageError, match="n must be positive, got 0"):
        from_namespace(Positive, p.parse_args(["--n", "0"]))


def test_percent_in_a_field_docstring_does_not_break_help():
    import argparse
    from dataclasses import dataclass

    from mechscope.config import add_arguments

    @dataclass(frozen=True)
    class WithPercent:
        share: float = 0.5
        """Share of rows, e.g. 50% of them."""

    p = argparse.ArgumentParser()
    add_arguments(p, WithPercent)
    assert "50% of them" in p.format_help()


def test_every_command_help_renders():
    from mechscope.cli import COMMANDS, command_parser

    for name in COMMANDS:
        assert command_parser(name).format_help().startswith(f"usage: mechscope {name}")
