"""Feature functions: what a hypothesis node claims its sites compute from the input.

A feature maps the inputs to keys; two inputs are equivalent for a node when their keys are equal, and
scrubbing replaces the node's value on x by its value on an equivalent x'. Signature::

    fn(inputs: LongTensor[N, T], targets: Tensor[N] | Tensor[N, S]) -> keys

- per-example feature:  keys [N] or [N, k]       (x' shares the whole key row with x)
- per-position feature: keys [N, T] or [N, T, k] (at each position t, x'_t shares the key at t; the value
  at position t is taken from x'_t at the same position). Only leaf nodes may be per-position: an inner
  node's value comes from one forward pass per example, so its x' cannot differ between positions.

Two choices are not functions: ``identity`` (the node depends on everything: x' = x) and ``none`` (the
node is irrelevant: x' is drawn unconditionally).

:data:`FEATURES` holds the built-in features by name; a hypothesis may also name any importable function
as ``"package.module:function"`` (set its ``per_position`` in the node when it is one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.scrub.errors import HypothesisError

FeatureFn = Callable[[Tensor, Tensor], Tensor]
IDENTITY, NONE = "identity", "none"


@dataclass(frozen=True)
class Feature:
    """A named feature function and whether its keys are per position."""

    name: str
    """How hypotheses refer to it."""
    fn: FeatureFn | None
    """inputs [N, T], targets → keys; None for ``identity`` and ``none``."""
    per_position: bool = False
    """Keys [N, T(, k)] compared position by position (leaf nodes only)."""


def _label(x: Tensor, y: Tensor) -> Tensor:
    return y


def _token(x: Tensor, y: Tensor) -> Tensor:
    return x


def _prev_token(x: Tensor, y: Tensor) -> Tensor:
    """The token before each position (−1 at position 0)."""
    return torch.cat([torch.full_like(x[:, :1], -1), x[:, :-1]], dim=1)


def _after_previous_occurrence(x: Tensor, y: Tensor) -> Tensor:
    """At t: the token after the latest s < t with x_s = x_t (what an induction head copies); −1 if none."""
    T = x.shape[1]
    same = (x[:, :, None] == x[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril(-1)  # [N, t, s], s < t
    s = torch.where(same, torch.arange(T), -1).max(-1).values  # latest earlier occurrence, [N, T]
    nxt = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -1)], dim=1)
    return torch.where(s >= 0, nxt.gather(1, s.clamp_min(0)), -1)


def _parens_elevation(x: Tensor) -> Tensor:
    from mechscope.zoo.parens import elevation

    return elevation(x)


def _parens_count(x: Tensor, y: Tensor) -> Tensor:
    """1 when there are as many "(" as ")" (final elevation 0)."""
    return (_parens_elevation(x)[:, -1] == 0).long()


def _parens_horizon(x: Tensor, y: Tensor) -> Tensor:
    """1 when the elevation never goes below 0."""
    return (_parens_elevation(x).min(1).values >= 0).long()


def _parens_tests(x: Tensor, y: Tensor) -> Tensor:
    return torch.stack([_parens_count(x, y), _parens_horizon(x, y)], dim=1)


def _parens_count_and_first_close(x: Tensor, y: Tensor) -> Tensor:
    """The count test and whether the first character is ")" (a horizon failure at position 1)."""
    from mechscope.zoo.parens import CLOSE

    return torch.stack([_parens_count(x, y), (x[:, 1] == CLOSE).long()], dim=1)


def _parens_length(x: Tensor, y: Tensor) -> Tensor:
    """The number of parentheses (which sets the padding mask every attention layer reads)."""
    from mechscope.zoo.parens import CLOSE, OPEN

    return ((x == OPEN) | (x == CLOSE)).sum(1)


def _parens_tests_and_length(x: Tensor, y: Tensor) -> Tensor:
    return torch.cat([_parens_tests(x, y), _parens_length(x, y)[:, None]], dim=1)


def _parens_elevation_state(x: Tensor, y: Tensor) -> Tensor:
    """At t: (token, elevation e_t, whether e_s ≥ 0 for every s ≤ t) — what a left-to-right reader knows at t."""
    e = _parens_elevation(x)
    return torch.stack([x, e, (e.cummin(1).values >= 0).long()], dim=2)


def _modadd_sum(x: Tensor, y: Tensor) -> Tensor:
    """(a + b) mod p, read from the inputs "a b =" (p is the "=" token)."""
    return (x[:, 0] + x[:, 1]) % x[:, 2]


def _modadd_a(x: Tensor, y: Tensor) -> Tensor:
    return x[:, 0]


def _modadd_difference(x: Tensor, y: Tensor) -> Tensor:
    return (x[:, 0] - x[:, 1]) % x[:, 2]


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature(IDENTITY, None),
        Feature(NONE, None),
        Feature("label", _label),
        Feature("token", _token, per_position=True),
        Feature("prev_token", _prev_token, per_position=True),
        Feature("after_previous_occurrence", _after_previous_occurrence, per_position=True),
        Feature("parens.count_test", _parens_count),
        Feature("parens.horizon_test", _parens_horizon),
        Feature("parens.tests", _parens_tests),
        Feature("parens.count_and_first_close", _parens_count_and_first_close),
        Feature("parens.length", _parens_length),
        Feature("parens.tests_and_length", _parens_tests_and_length),
        Feature("parens.elevation_state", _parens_elevation_state, per_position=True),
        Feature("modadd.sum", _modadd_sum),
        Feature("modadd.a", _modadd_a),
        Feature("modadd.difference", _modadd_difference),
    )
}
"""Built-in features by name (the docstring of each function says what it computes)."""


def resolve_feature(spec: str | None, per_position: bool | None, node: str) -> Feature:
    """A :class:`Feature` from a name in :data:`FEATURES`, ``"module:function"``, or None (= ``none``)."""
    if spec is None:
        return FEATURES[NONE]
    if spec in FEATURES:
        f = FEATURES[spec]
        if per_position is not None and per_position != f.per_position:
            raise HypothesisError(
                f"node {node!r}: feature {spec!r} is {'' if f.per_position else 'not '}per-position; drop per_position"
            )
        return f
    if ":" not in spec:
        raise HypothesisError(
            f"node {node!r}: unknown feature {spec!r}; use one of {', '.join(FEATURES)} or 'package.module:function'"
        )
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise HypothesisError(f"node {node!r}: cannot import feature {spec!r} ({e})") from e
    return Feature(spec, fn, bool(per_position if per_position is not None else getattr(fn, "per_position", False)))
