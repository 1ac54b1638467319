"""What a click on a latent node shows: its top output-logit effects, and its top-activating contexts when
an activation store of the MLP inputs is given.

Logit effects of latent i of layer l: e = (w_i ⊙ g) W_U, demeaned over the vocabulary (the one formula,
:func:`mechscope.report.latents.logit_effects`, with ``centred``), where w_i is what the latent writes into the
residual stream (its decoder row W_dec[i]; for a cross-layer transcoder the sum of its rows to every later
layer), g the final norm's weight and W_U the unembedding [d, V]. This is the
direct path through the residual stream only, per unit of activation and before the final norm's 1/rms
scale (the same for every token, so the ranking is exact; the values are directions, not calibrated
logit changes).

Top contexts: the store's first ``rows`` training rows of ``mlp_in.l`` are encoded by layer l's transcoder;
for each shown latent the ``k`` largest activations are kept with their token and its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.graph.freeze import model_kind
from mechscope.graph.replacement import LayerTranscoder
from mechscope.models.loading import output_weight
from mechscope.report.latents import logit_effects

if TYPE_CHECKING:
    from mechscope.zoo.transformer import ZooTransformer


def unembedding(model: nn.Module) -> Tensor:
    """[d, V] the unembedding with the final norm's weight folded in (rows scaled by g)."""
    if model_kind(model) == "zoo":
        zoo = cast("ZooTransformer", model)
        W = zoo.W_U.detach()
        g = getattr(zoo.ln_final, "weight", None)
    else:
        out = output_weight(model)
        if out is None:
            raise UsageError(f"{type(model).__name__} has no output embedding to read the unembedding from")
        W = out.detach().t()
        inner = getattr(model, "model", None)
        g = getattr(getattr(inner, "norm", None), "weight", None)
    return W if g is None else W * g.detach()[:, None]


def latent_logits(
    tc: LayerTranscoder, latent: int, W_U: Tensor, decode: Callable[[int], str], k: int = 6
) -> dict[str, list]:
    """The k tokens whose logits latent ``latent`` raises most and lowers most: :func:`mechscope.report.latents.logit_effects`
    of its residual write, centred over the vocabulary. W_U: [d, V] from :func:`unembedding`."""
    uv, ui, dv, di = (
        t[0].tolist() for t in logit_effects(tc.residual_write(latent).detach()[None], W_U.T, k, centred=True)
    )
    return {"up": [[decode(i), v] for v, i in zip(uv, ui)], "down": [[decode(i), v] for v, i in zip(dv, di)]}


@torch.no_grad()
def top_contexts(
    store: Any,
    tc: LayerTranscoder,
    latents: list[int],
    rows: int,
    k: int,
    decode: Callable[[int], str],
    window: int = 8,
    chunk: int = 4096,
) -> dict[int, list[dict[str, Any]]]:
    """latent → up to k contexts {value, before, token, after} from the store's training rows of the MLP's input."""
    if not latents or k == 0:
        return {}
    site = f"{tc.mlp}:input"
    n = min(rows, store.n_rows())
    cols = torch.tensor(latents)
    best_v = torch.full((k, len(latents)), -float("inf"))
    best_r = torch.full((k, len(latents)), -1, dtype=torch.long)
    for start in range(0, n, chunk):
        x = store.rows(site, start, min(n, start + chunk))
        codes = tc.encode_sparse(x)
        a = codes.values.new_zeros(x.shape[0], tc.W_enc.shape[1]).scatter(1, codes.indices, codes.values)[
            :, cols
        ]  # [b, m]
        v = torch.cat([best_v, a])
        r = torch.cat([best_r, torch.arange(start, start + x.shape[0])[:, None].expand(-1, len(latents))])
        top = v.topk(k, dim=0)
        best_v, best_r = top.values, r.gather(0, top.indices)
    tokens = store.tokens()
    out: dict[int, list[dict[str, Any]]] = {}
    for j, lat in enumerate(latents):
        items = []
        for v, r in zip(best_v[:, j].tolist(), best_r[:, j].tolist()):
            if r < 0 or v <= 0:
                continue
            c, p = store.row_to_position(r)
            ctx = tokens[c].tolist()
            items.append(
                {
                    "value": v,
                    "before": "".join(decode(t) for t in ctx[max(0, p - window) : p]),
                    "token": decode(ctx[p]),
                    "after": "".join(decode(t) for t in ctx[p + 1 : p + 1 + window // 2]),
                }
            )
        out[lat] = items
    return out
