"""Next-token losses with several MLPs replaced at once, for comparing dictionaries that span layers.

A cross-layer transcoder's layer-l prediction depends on the latents of every earlier layer it covers, so it
can only be judged with all of its MLPs replaced together; per-layer transcoders over the same MLPs, and
zero- and mean-ablation of those MLPs, are the baselines on the same contexts. Shapes: N contexts of T
tokens.

    loss(context) = mean over its T − 1 predictions of −log p(token_{t+1} | replaced model)

Loss recovered against deleting the MLPs is :func:`mechscope.evals.metrics.loss_recovered` with
``ablated`` the zero-ablated losses (1 is the clean model, 0 is no better than deleting the MLPs); pass it the
standard error of the per-context gap (``clustered_stderr(zero − clean, ones)``) so a gap within noise is n/a.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mechscope.graph.replacement import LayerTranscoder, ReplacementModel, run_logits
from mechscope.sites import PatchFn, Site, patch


def next_token_nll(logits: Tensor, ids: Tensor) -> Tensor:
    """−log p(ids[t+1] | logits[t]) per prediction, float64. logits [..., T, V], ids [..., T] → [..., T − 1]."""
    lp = logits[..., :-1, :].double().log_softmax(-1)
    return -lp.gather(-1, ids[..., 1:, None]).squeeze(-1)


def _ce(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean next-token loss per context. logits [N, T, V], ids [N, T] → [N] float64."""
    return next_token_nll(logits, ids).mean(-1)


@torch.no_grad()
def clean_losses(model: nn.Module, ids: Tensor) -> Tensor:
    """[N] the model's own losses."""
    return _ce(run_logits(model, ids), ids)


def _writes(vec: Tensor) -> PatchFn:
    """A patch that writes ``vec`` [d] at every position of the output it replaces."""
    return lambda act: vec.to(act.dtype).expand_as(act)


@torch.no_grad()
def fixed_losses(model: nn.Module, ids: Tensor, outputs: Mapping[str, Tensor]) -> Tensor:
    """[N] losses with each MLP (module path → a vector [d]) writing that fixed vector at every position
    (zeros: zero-ablation; the training mean: mean-ablation)."""
    with contextlib.ExitStack() as stack:
        for path, vec in outputs.items():
            stack.enter_context(patch(model, Site(path, "output", None), _writes(vec)))
        return _ce(run_logits(model, ids), ids)


@torch.no_grad()
def replaced_losses(model: nn.Module, ids: Tensor, transcoders: list[LayerTranscoder]) -> Tensor:
    """[N] losses with the MLPs of ``transcoders`` (layers 0, 1, … in order; a prefix of the model's MLPs) all
    replaced by their predictions from the live inputs (no error terms), as in the graph's replacement model."""
    rm = ReplacementModel(model, transcoders)
    return torch.stack([_ce(rm.spliced_logits(row)[None], row[None])[0] for row in ids])


__all__ = ["clean_losses", "fixed_losses", "next_token_nll", "replaced_losses"]
