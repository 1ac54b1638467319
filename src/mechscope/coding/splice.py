"""The frontier's ``loss_fn`` for a language model: each reconstruction spliced into the model at a site, scored
beside the clean, zero-ablation, mean-ablation and rock baselines (:class:`mechscope.evals.splice.SpliceProbe`)."""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from mechscope.coding.frontier import LossFn
from mechscope.task import Task


def splice_loss_fn(
    model: torch.nn.Module,
    site: str,
    task: Task,
    mean_act: Tensor,
    skip_first_positions: int = 0,
    batch_size: int = 8,
) -> tuple[LossFn, dict[str, float]]:
    """A frontier ``loss_fn`` on ``task``'s held-out examples (e.g. :func:`mechscope.evals.evaluate.store_task`), and the
    baselines it is scored against.

    The rock is fit on the task's training targets (a task without training examples has no rock: NaN). The
    baselines (clean, zero ablation, mean ablation, rock) are measured once with the identity splice; each call then
    costs one forward pass per batch and returns ``loss`` (spliced CE), ``kl`` and ``loss_recovered_{zero,mean,rock}``.
    """
    from mechscope.evals.splice import SpliceConfig, SpliceProbe, evaluate_splice

    cfg = SpliceConfig(batch_size=batch_size, skip_first_positions=skip_first_positions)
    base = evaluate_splice(model, site, lambda x: x, task, mean_act=mean_act, cfg=cfg)
    for w in base.warnings():  # a gap too small to divide by makes every point's loss recovered vs it n/a
        print(f"mechscope: {w}", file=sys.stderr)
    probe = SpliceProbe(model, site, task, base, cfg)
    return probe, probe.baselines
