"""How good is the replacement model behind an attribution graph, on held-out text rather than one prompt?

Next-token loss (nats per prediction, mean ± standard error clustered by context) on held-out contexts of
a store: the clean model, the global replacement model (every MLP → its transcoder, no error nodes), each
MLP replaced alone, and the rock fit on the store's training tokens. The replacement models are measured
twice: with BOS (position 0 of every context) replaced like any position, and with BOS's MLPs kept exact
(``mechscope graph``'s default: BOS's state is the same in every context, a constant of the model).
Prints one JSON line.

    OMP_NUM_THREADS=1 python bench/graph_replacement.py --transcoders DIR --store STORE [--contexts 8] [--model smollm2]
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from mechscope.evals.rock import Rock
from mechscope.graph.replacement import find_transcoders
from mechscope.graph.splice import next_token_nll
from mechscope.models import load_model
from mechscope.sites import Site, capture, patch
from mechscope.store import ActivationStore


def losses(model, ids: torch.Tensor, tcs, layers, bos_exact: bool = False) -> torch.Tensor:
    """Per-context mean next-token loss [N] with the MLPs of ``layers`` replaced by their transcoders
    (position 0 keeps the true MLP outputs with ``bos_exact``)."""
    with torch.no_grad(), contextlib.ExitStack() as stack:
        xs = stack.enter_context(capture(model, [Site(tcs[l].mlp, "input") for l in layers]))
        for l in layers:

            def out(act, tc=tcs[l]):
                x = xs[f"{tc.mlp}:input"]
                pred = tc.sae.predict(x.reshape(-1, x.shape[-1])).reshape(act.shape)
                return torch.cat([act[:, :1], pred[:, 1:]], dim=1) if bos_exact else pred

            stack.enter_context(patch(model, Site(tcs[l].mlp, "output"), out))
        logits = model(input_ids=ids, use_cache=False).logits
    return next_token_nll(logits, ids).mean(-1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--transcoders", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--contexts", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(a.model).model
    tcs = find_transcoders(model, a.transcoders)
    store = ActivationStore(a.store)
    ids = store.tokens("val")[: a.contexts]
    rock = Rock.fit(store.tokens()[:, 1:], model.config.vocab_size)

    def stat(v: torch.Tensor) -> dict[str, float]:
        return {"mean": float(v.mean()), "se": float(v.std() / len(v) ** 0.5)}

    clean = losses(model, ids, tcs, [])
    out = {
        "contexts": int(ids.shape[0]),
        "tokens_per_context": int(ids.shape[1]),
        "clean": stat(clean),
        "replacement_all": stat(losses(model, ids, tcs, range(len(tcs)))),
        "replacement_all_bos_exact": stat(losses(model, ids, tcs, range(len(tcs)), bos_exact=True)),
        "rock": stat(rock.nll(ids[:, 1:].reshape(-1)).reshape(ids.shape[0], -1).mean(1)),
        "one_layer_minus_clean": {
            l: round(float((losses(model, ids, tcs, [l]) - clean).mean()), 4) for l in range(len(tcs))
        },
        "one_layer_minus_clean_bos_exact": {
            l: round(float((losses(model, ids, tcs, [l], True) - clean).mean()), 4) for l in range(len(tcs))
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
