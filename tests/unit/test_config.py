"""Configs become CLI flags with their docstrings as help, and come back intact."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from mechscope.config import add_arguments, field_docs, from_dict, from_namespace


@dataclass(frozen=True)
class Example:
    """An example config."""

    steps: int = 10
    """How many steps."""
    tol: float | None = None
    """Stop below this (None: never)."""
    old_tol: Optional[float] = None
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
    _, cfg = _parse(["--steps", "3", "--tol", "0.5", "--old-tol", "0.25", "--arch", "b", "--sizes", "4", "5", "--no-fast"])
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
