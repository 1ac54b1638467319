"""The rows a probe reads: the model's activations at one site, and each dictionary's codes, for a concept's rows.

Shapes: C contexts, T tokens, R rows, d width at the site, n latents of a dictionary.

One forward pass per batch of contexts (stopped after the site) feeds every dictionary, so comparing several
dictionaries costs the model once. A token row reads the activation at its position; a document row is the mean
over positions 1..T−1 of the activations, and of the *codes* (each position is encoded, then the codes are
averaged, as SAEBench does), so a latent's document value is its mean firing over the context.
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
def concept_features(
    model: nn.Module,
    site: str,
    data: ConceptData,
    encoders: Mapping[str, Callable[[Tensor], Tensor]],
    batch_size: int = 16,
) -> dict[str, Tensor]:
    """``{"activations": [R, d], name: [R, n] for each encoder}`` (float32, on the cpu) for the rows of ``data``.

    ``encoders`` map [N, d] activations to [N, n] codes (e.g. ``sae.encode``); the model runs where its parameters
    are and the encoders are called on that device."""
    (resolved,) = resolve_sites(model, site)
    device = next(model.parameters()).device
    T = data.contexts.shape[1]
    out: dict[str, list[Tensor]] = {ACTIVATIONS: [], **{name: [] for name in encoders}}
    order: list[Tensor] = []
    for start in range(0, len(data.contexts), batch_size):
        stop = min(start + batch_size, len(data.contexts))
        mine = ((data.context >= start) & (data.context < stop)).nonzero().flatten()
        if not len(mine):
            continue
        ids = data.contexts[start:stop].to(device)
        acts = run_to_sites(model, [resolved], input_ids=ids)[str(resolved)].float()  # [b, T, d]
        ctx, pos = data.context[mine] - start, data.position[mine]
        doc = pos < 0
        order.append(mine)
        x_tok = acts[ctx[~doc].to(device), pos[~doc].to(device)]  # [r_tok, d]
        body = acts[:, 1:T]  # [b, T−1, d]
        x_doc = body.mean(1)[ctx[doc].to(device)]  # [r_doc, d]
        out[ACTIVATIONS].append(_merge(x_tok, x_doc, doc))
        for name, encode in encoders.items():
            c_tok = encode(x_tok).float()
            if doc.any():
                b, L, d = body.shape
                c_all = encode(body.reshape(b * L, d)).float()
                c_doc = c_all.view(b, L, -1).mean(1)[ctx[doc].to(device)]
            else:
                c_doc = c_tok.new_zeros(0, c_tok.shape[1])
            out[name].append(_merge(c_tok, c_doc, doc))
    rows = torch.cat(order)
    result = {}
    for name, parts in out.items():
        stacked = torch.cat(parts).cpu()
        result[name] = stacked.new_empty(stacked.shape)
        result[name][rows] = stacked
    return result


def _merge(tok: Tensor, doc_rows: Tensor, doc: Tensor) -> Tensor:
    """Rows in their original order: token rows where ``doc`` is False, document rows where it is True."""
    merged = tok.new_empty(len(doc), tok.shape[1] if len(tok) else doc_rows.shape[1])
    merged[(~doc).to(merged.device)] = tok
    merged[doc.to(merged.device)] = doc_rows
    return merged
