"""Frozen dataclass configs and the command-line flags generated from them.

Every component has one ``@dataclass(frozen=True)`` config with a docstring under each field
(the string literal right after the field). :func:`add_arguments` turns such a class into
argparse flags, using those docstrings as help, and :func:`from_namespace` builds the config
back. Configs are never mutated: use :func:`dataclasses.replace` to derive a new one.

A ``float`` flag refuses NaN and ±inf (:func:`finite_float`): no config means anything by them unless it says
so, and a NaN slips through every ``x < 0`` check of ``__post_init__``. A field where a non-finite value does
mean something opts in with ``field(default=…, metadata=NON_FINITE)`` and its docstring says what it means.

A numeric field may also declare the values it takes, ``field(default=…, metadata=in_range(0, 10, lo_open=True))``
(combine with ``NON_FINITE`` as ``{**NON_FINITE, **in_range(…)}``). The one :class:`Range` is used twice: by the
flag's argparse ``type`` (:class:`NumberType`: argparse names the flag, exit 2) and by :func:`check_ranges`, which a
config calls first in its ``__post_init__`` so that a config built in Python refuses the value with a ValueError
(:class:`~mechscope.errors.UsageError`) naming the field. A huge-but-finite value (``--lr 1e300``) is thus
refused up front instead of overflowing later. Hand-written count flags use :data:`positive_int`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Literal, TypeVar, get_args, get_origin

from mechscope.errors import UsageError, flag_message, flag_names

C = TypeVar("C")

NON_FINITE = {"non_finite": True}
"""Field metadata of a ``float`` field whose flag accepts ``nan``, ``inf`` and ``-inf`` (see the module docstring)."""


def finite_float(text: str) -> float:
    """The argparse ``type`` of every float flag: a finite number; ``nan``, ``inf`` and ``-inf`` are refused
    (argparse then names the flag in its one-line error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a finite value")
    return value


INT_LIMIT = 2**53
"""Largest magnitude an integer flag takes: every count, step and seed fits far below it, and past it torch
and NumPy overflow (a seed of 10^30 raised an OverflowError traceback)."""


def bounded_int(text: str) -> int:
    """The argparse ``type`` of every integer flag: an integer of magnitude at most :data:`INT_LIMIT`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if abs(value) > INT_LIMIT:
        raise argparse.ArgumentTypeError(f"{text} is too large; give a whole number of magnitude at most 2^53")
    return value


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field or flag takes: ``lo``..``hi`` (None: unbounded on that side), each end open or
    closed; ``why`` is said after the refusal (e.g. what the bound protects)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""

    def __contains__(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '≥'} {_short(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '≤'} {_short(self.hi)}"
        return f"{'(' if self.lo_open else '['}{_short(self.lo)}, {_short(self.hi)}{')' if self.hi_open else ']'}"

    def refusal(self, value: float) -> str:
        """The end of the one-line message refusing ``value``."""
        where = "in " if self.lo is not None and self.hi is not None else ""
        return f"{value!r} is out of range; give a value {where}{self}" + (f" ({self.why})" if self.why else "")


def _short(x: float | None) -> str:
    """A bound as a person writes it: 0, 10, 1e6, 1e-3."""
    return f"{x:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def in_range(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False, why: str = ""
) -> dict[str, Range]:
    """Field metadata declaring the :class:`Range` of a numeric field (see the module docstring)."""
    return {"range": Range(lo, hi, lo_open, hi_open, why)}


COUNT = in_range(1)
"""Field metadata of a count that must be at least 1 (rows, steps, chains, latents)."""
NON_NEGATIVE = in_range(0)
"""Field metadata of a count or size where 0 means none (warm-up steps)."""
LEARNING_RATE = in_range(0, 10, lo_open=True)
"""Field metadata of a learning rate: positive, and at most 10 (larger ones overflow the weights in a step)."""
COEFFICIENT = in_range(0, 1e6)
"""Field metadata of a loss coefficient: 0 switches the term off; past 10^6 the term overflows float32 losses."""
ADAM_BETA = in_range(0, 1, hi_open=True)
"""Field metadata of an Adam beta: a decay rate in [0, 1)."""


def check_ranges(cfg: Any) -> None:
    """Raise a :class:`~mechscope.errors.UsageError` (a ValueError) naming the first field of the dataclass ``cfg``
    whose value (or any element of a tuple value) lies outside its declared :class:`Range`; None (an unset
    optional) passes. Call it first in ``__post_init__``."""
    for f in dataclasses.fields(cfg):
        rng = f.metadata.get("range")
        value = getattr(cfg, f.name)
        if rng is None or value is None:
            continue
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in rng:
                raise UsageError(f"`{f.name}`: {rng.refusal(v)}")


@dataclasses.dataclass(frozen=True)
class NumberType:
    """An argparse ``type``: ``parse`` the text (:func:`finite_float`, :func:`bounded_int` or a plain type), then
    refuse a value outside ``range`` (argparse names the flag in its one-line error, exit 2)."""

    parse: Callable[[str], Any]
    range: Range | None = None

    def __call__(self, text: str) -> Any:
        value = self.parse(text)
        if self.range is not None and value not in self.range:
            raise argparse.ArgumentTypeError(self.range.refusal(value))
        return value


positive_int = NumberType(bounded_int, COUNT["range"])
"""argparse ``type`` of a hand-written count flag (not generated from a field): a whole number ≥ 1."""


class StrictBooleanAction(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag`` where giving both is a usage error (argparse would silently keep the last)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = f"_given_{self.dest}"
        value = not (option_string or "").startswith("--no-")
        earlier = getattr(namespace, seen, None)
        if earlier is not None and earlier[0] != value:
            raise argparse.ArgumentError(
                self, f"{earlier[1]} and {option_string} contradict each other; give only one of them"
            )
        setattr(namespace, seen, (value, option_string))
        super().__call__(parser, namespace, values, option_string)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass (and its bases) to the string literal written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flag(name: str, prefix: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls``; help text is the field's docstring."""
    docs = field_docs(cls)
    hints = _resolved_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS}
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        origin, args = get_origin(tp), get_args(tp)
        if origin is typing.Union or origin is types.UnionType:
            non_none = [a for a in args if a is not type(None)]
            tp = non_none[0] if len(non_none) == 1 else str
            origin, args = get_origin(tp), get_args(tp)
        if tp is bool:
            kwargs["action"] = StrictBooleanAction
        elif origin is Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
        elif origin in (tuple, list):
            kwargs["nargs"] = "+"
            kwargs["type"] = _scalar_type(args[0] if args and args[0] is not Ellipsis else str, f)
        elif tp in (int, float, str):
            kwargs["type"] = _scalar_type(tp, f)
        else:
            kwargs["type"] = str
        kwargs["help"] = f"{help_text} (default: {default!r})"
        group.add_argument(_flag(f.name, prefix), **kwargs)


def _scalar_type(tp: type, f: dataclasses.Field) -> Any:
    """argparse ``type`` of one value of field ``f``: :func:`bounded_int` for an int, :func:`finite_float` for a
    float unless the field opts out, wrapped in a :class:`NumberType` when the field declares a range."""
    parse = bounded_int if tp is int else finite_float if tp is float and not f.metadata.get("non_finite") else tp
    rng = f.metadata.get("range")
    return NumberType(parse, rng) if rng is not None else parse


def from_namespace(cls: type[C], ns: argparse.Namespace, prefix: str = "", **overrides: Any) -> C:
    """Build ``cls`` from parsed flags (only those given), then ``overrides``.

    A value the config's ``__post_init__`` refuses with a plain ValueError becomes a :class:`UsageError`
    with the same message, so the command ends in one line with exit code 2; a field the message names as
    a parameter (`field`) is shown as its flag."""
    given = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        if hasattr(ns, key):
            value = getattr(ns, key)
            if isinstance(value, list):
                value = tuple(value)
            given[f.name] = value
    given.update(overrides)
    flags = {f.name: _flag(f.name, prefix) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        with flag_names(flags):
            return cls(**given)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(flag_message(str(err), flags)) from err


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build ``cls`` from a dict, ignoring keys it does not know (tolerant loading)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _resolved_hints(cls)
    kept = {}
    for k, v in data.items():
        if k not in names:
            continue
        if isinstance(v, list) and get_origin(hints[k]) is tuple:
            v = tuple(v)
        kept[k] = v
    return cls(**kept)
