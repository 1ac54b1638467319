"""The rows a probe reads: the model's activations at one site, and each dictionary's codes, for a concept's rows.

Shapes: C contexts, T tokens, R rows, d width at the site, n latents of a dictionary.

:func:`context_activations` runs the model once over a concept's contexts (stopped after the site), and
:func:`concept_features` turns those [C, T, d] activations into rows for the activations and for every dictionary,
so comparing dictionaries (or probing a new one later, from activations saved by :mod:`mechscope.probing.run`) costs
the model once. A token row reads the activation at its position; a document row is the mean over positions
1..T−1 of the activations, and of the *codes* (each position is encoded, then the codes are averaged, as SAEBench
does), so a latent's document value is its mean firing over the context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mechscope.probing.concepts import ConceptData
from mechscope.sites import resolve_sites, run_to_sites

ACTIVATIONS = "activations"
"""Key of the model's own activations in the result of :func:`concept_features`."""


@torch.no_grad()
def context_activations(model: nn.Module, site: str, contexts: Tensor, batch_size: int = 16) -> Tensor:
    """[C, T, d] float32 activations at ``site`` over ``contexts`` [C, T], on the cpu (the model runs where its
    parameters are)."""
    (resolved,) = resolve_sites(model, site)
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(contexts), batch_size):
        ids = contexts[start : start + batch_size].to(device)
        parts.append(run_to_sites(model, [resolved], input_ids=ids)[str(resolved)].float().cpu())
    return torch.cat(parts)


@torch.no_grad()
def concept_features(
    acts: Tensor,
    data: ConceptData,
    encoders: Mapping[str, Callable[[Tensor], Tensor]],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> dict[str, Tensor]:
    """``{"activations": [R, d], name: [R, n] for each encoder}`` (float32, cpu) for the rows of ``data``, from its
    contexts' activations ``acts`` [C, T, d]; ``encoders`` map [N, d] → [N, n] codes on ``device``."""
    T = acts.shape[1]
    doc = data.position < 0
    tok = ~doc
    out = {ACTIVATIONS: acts.new_empty(len(data.label), acts.shape[2])}
    out[ACTIVATIONS][tok] = acts[data.context[tok], data.position[tok]]
    pooled = acts[:, 1:T].mean(1)  # [C, d]
    out[ACTIVATIONS][doc] = pooled[data.context[doc]]
    for name, encode in encoders.items():
        x_tok = out[ACTIVATIONS][tok].to(device)
        c_tok = encode(x_tok).float().cpu()
        codes = c_tok.new_zeros(len(data.label), c_tok.shape[1])
        codes[tok] = c_tok
        if doc.any():
            mean_codes = []
            for start in range(0, len(acts), batch_size):  # every position is encoded, then averaged
                body = acts[start : start + batch_size, 1:T].to(device)
                b, L, d = body.shape
                mean_codes.append(encode(body.reshape(b * L, d)).float().view(b, L, -1).mean(1).cpu())
            codes[doc] = torch.cat(mean_codes)[data.context[doc]]
        out[name] = codes
    return out
