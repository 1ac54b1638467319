"""Causal scrubbing and program replacement: test a hypothesis about a model by resampling ablations.

>>> hyp = load_hypothesis("examples/scrub/parens-correct.yaml")
>>> result = scrub("zoo:parens", hyp)      # ScrubResult: loss_clean, loss_scrubbed (+ CI), loss_baseline,
>>> print(result.verdict())                # loss_rock, recovered (+ CI), and the verdict in words

See :mod:`mechscope.scrub.hypothesis` (the format), :mod:`~mechscope.scrub.engine` (the algorithm and the
formulas), :mod:`~mechscope.scrub.features`, :mod:`~mechscope.scrub.programs`, :mod:`~mechscope.scrub.tasks`
(the data a hypothesis is scored on) and :mod:`~mechscope.scrub.report` (``--report``). Results: docs/scrub.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mechscope.distributed import World
from mechscope.scrub.engine import Scrubber, ScrubResult
from mechscope.scrub.errors import HypothesisError
from mechscope.scrub.features import FEATURES, Feature
from mechscope.scrub.hypothesis import Hypothesis, Node, hypothesis_from_dict, load_hypothesis
from mechscope.scrub.programs import PROGRAMS, build_programs
from mechscope.scrub.tasks import TASKS, Target, load_target

__all__ = [
    "FEATURES",
    "Feature",
    "Hypothesis",
    "HypothesisError",
    "Node",
    "PROGRAMS",
    "ScrubResult",
    "Scrubber",
    "TASKS",
    "Target",
    "hypothesis_from_dict",
    "load_hypothesis",
    "load_target",
    "run_hypothesis",
    "scrub",
]


def run_hypothesis(hyp: Hypothesis, target: Target, progress: bool = False, world: World | None = None) -> ScrubResult:
    """Scrub ``hyp`` on an already loaded model and its data; ``world``: torchrun ranks that share the seeds."""
    programs = build_programs(hyp.nodes(), target.model, target.task)
    return Scrubber(
        target.model,
        hyp,
        target.inputs,
        target.targets,
        target.task,
        target.pool_inputs,
        target.pool_targets,
        programs=programs,
    ).run(progress, world)


def scrub(
    model: str | None,
    hyp: Hypothesis,
    examples: int | None = None,
    seeds: int | None = None,
    progress: bool = False,
    *,
    device: str | None = None,
    dtype: str | None = None,
    world: World | None = None,
) -> ScrubResult:
    """Load the model (``zoo:NAME``, ``smollm2`` or a path; default: the one the hypothesis names) on ``device`` in
    ``dtype`` (:func:`mechscope.models.resolve.resolve_model`) and scrub; ``world``: torchrun ranks that share the seeds."""
    spec = model or hyp.model
    if spec is None:
        raise HypothesisError("no model: pass `model` (zoo:NAME, smollm2 or PATH) or put `model:` in the hypothesis")
    over: dict[str, Any] = {k: v for k, v in (("examples", examples), ("seeds", seeds)) if v is not None}
    hyp = dataclasses.replace(hyp, **over)
    target = load_target(spec, hyp.task, hyp.examples, hyp.pool, dict(hyp.task_args), device=device, dtype=dtype)
    return run_hypothesis(hyp, target, progress, world)
