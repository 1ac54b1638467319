"""The frontier's ``loss_fn`` for a language model: each reconstruction spliced into the model at a site, scored
beside the clean, zero-ablation, mean-ablation and rock baselines (:class:`mechscope.evals.splice.SpliceProbe`)."""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from mechscope.coding.frontier import LossFn


def splice_loss_fn(
    model: torch.nn.Module, site: str, input_ids: Tensor, mean_act: Tensor, skip_first_positions: int = 0, batch_size: int = 8,
    rock_ids: Tensor | None = None,
) -> tuple[LossFn, dict[str, float]]:
    """A frontier ``loss_fn`` on contexts input_ids [N, T], and the baselines it is scored against.

    ``rock_ids`` [N_train, T] are the training contexts whose next-token targets the rock is fit on
    (without them the rock is NaN). The baselines (clean, zero ablation, mean ablation, rock) are measured once with the identity splice;
    each call then costs one forward pass per batch and returns ``loss`` (spliced CE), ``kl`` and
    ``loss_recovered_{zero,mean,rock}``.
    """
    from mechscope.evals.splice import LMTask, SpliceConfig, SpliceProbe, evaluate_splice

    task = LMTask(input_ids)
    cfg = SpliceConfig(batch_size=batch_size, skip_first_positions=skip_first_positions)
    rock_targets = None if rock_ids is None else LMTask(rock_ids).targets()
    base = evaluate_splice(model, site, lambda x: x, task, mean_act=mean_act, rock_targets=rock_targets, cfg=cfg)
    for w in base.warnings():  # a gap too small to divide by makes every point's loss recovered vs it n/a
        print(f"mechscope: {w}", file=sys.stderr)
    probe = SpliceProbe(model, site, task, base, cfg)
    return probe, probe.baselines
