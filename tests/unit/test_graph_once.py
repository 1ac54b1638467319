"""Issue 25: the attribution runs the frozen forward once per prompt and reads every chunk of targets from its kept
autograd graph, without running what the replay replaces (MLPs) or does not read (queries and keys).

Known answers:

- the adjacency equals the algorithm before it (kept here, not in the package: a fresh frozen forward for each
  target, MLPs run and then replaced, one backward) entry by entry to float32 rounding, on a Llama (rotary, grouped
  queries), a Gemma 2 (post-feedforward norms, soft-caps, sliding window) and a GPT-2 (LayerNorm, fused q/k/v), with a
  batch size that leaves chunks of mixed layers and a short last chunk, BOS in the constant or not;
- during :func:`attribute` block 0 runs three times (the replay kept for every backward, then the replays at zero and
  at the clean leaves for the constants and values) and no MLP's or query/key projection's own forward runs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from mechscope.graph.attribute import Nodes, attribute, select_nodes
from mechscope.graph.freeze import frozen
from mechscope.graph.replacement import Leaves, Recording, ReplacementModel, run_logits
from mechscope.sites import Site, capture, patch
from tests.unit.test_graph_families import IDS, _model, _transcoders


def _reference(rm: ReplacementModel, rec: Recording, nodes: Nodes) -> torch.Tensor:
    """The adjacency as computed before issue 25: for each target a fresh frozen forward (batch 1, MLPs computed and
    then replaced by transcoder + error node), one backward, its row read from the leaves' gradients."""
    N = nodes.size
    A = torch.zeros(N, N, dtype=torch.float64)
    targets = [*range(nodes.n_lat), *range(N - nodes.n_logit, N)]
    for t in targets:
        leaves = Leaves.of(rec, 1, grad=True)
        rm.freezer.mode = "replay"
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen(rm.model, rm.freezer))
            xs = stack.enter_context(capture(rm.model, [Site(tc.mlp, "input") for tc in rm.tcs], detach=False))
            stack.enter_context(patch(rm.model, rm.block0, lambda act, emb=leaves.emb: emb))
            for l, tc in enumerate(rm.tcs):

                def out(act, l=l, tc=tc, leaves=leaves, xs=xs):
                    return rm.decode(l, leaves.acts, rec.idx, xs[f"{tc.mlp}:input"]) + leaves.err[l]

                stack.enter_context(patch(rm.model, Site(tc.out_module, "output"), out))
            logits = run_logits(rm.model, rec.ids[None])
        if t < nodes.n_lat:
            l, p, i = int(nodes.layer[t]), int(nodes.pos[t]), int(nodes.latent[t])
            val = xs[f"{rm.tcs[l].mlp}:input"][0, p] @ rm.tcs[l].W_enc[:, i] + rm.tcs[l].b_enc[i]
        else:
            row = logits[0, nodes.logit_pos]
            val = row[int(nodes.logit_tokens[t - (N - nodes.n_logit)])] - row.mean()
        g = torch.autograd.grad(val, [leaves.emb, *leaves.acts, *leaves.err], allow_unused=True)
        L = nodes.n_layers
        g_emb, g_acts, g_err = g[0], g[1 : 1 + L], g[1 + L :]
        zero = torch.zeros(1, nodes.T, 1)
        A[t, nodes.token_index(0) : nodes.token_index(0) + nodes.T] = (g_emb[0] * rec.emb).sum(-1).double()
        for l in range(L):
            src = (nodes.layer == l).nonzero(as_tuple=True)[0]
            if g_acts[l] is not None:
                A[t, src] = (g_acts[l][0] * rec.acts[l])[nodes.pos[src], nodes.slot[src]].double()
            ge = zero if g_err[l] is None else g_err[l]
            A[t, nodes.error_index(l, 0) : nodes.error_index(l, 0) + nodes.T] = (ge[0] * rec.err[l]).sum(-1).double()
        if nodes.const_pos0:
            A[t, nodes.token_index(0)] = 0
            A[t, [nodes.error_index(l, 0) for l in range(L)]] = 0
    return A


@pytest.mark.parametrize(("name", "bos"), [("llama", True), ("gemma2", False), ("gpt2", True)])
def test_one_forward_gives_the_adjacency_of_one_forward_per_target(name, bos):
    model = _model(name)
    rm = ReplacementModel(model, _transcoders(model))
    rec = rm.record(IDS)
    nodes = select_nodes(rec, max_logits=4, logit_probability=0.9, const_pos0=bos)
    batch = 7  # chunks that mix layers (the logits, then layer 1 then 0) and a short last chunk
    assert (nodes.n_lat + nodes.n_logit) % batch and nodes.n_lat > 20
    new = attribute(rm, rec, nodes, batch_size=batch).adjacency
    old = _reference(rm, rec, nodes)
    assert int((old != 0).sum()) > 200
    gap = float((new - old).abs().max())
    assert gap <= 1e-6 * float(old.abs().max()), (gap, float(old.abs().max()))


def test_attribution_runs_the_forward_once_and_not_the_replaced_modules(monkeypatch):
    model = _model("llama")
    rm = ReplacementModel(model, _transcoders(model))
    rec = rm.record(IDS)
    nodes = select_nodes(rec, max_logits=4, logit_probability=0.9)
    blocks = {"block0": 0, "mlp": 0, "qk": 0}
    layers = model.model.layers
    qk = {id(m) for layer in layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj)}
    mlp_forward, linear_forward = type(layers[0].mlp).forward, nn.Linear.forward

    def count_mlp(self, *a, **k):
        blocks["mlp"] += 1
        return mlp_forward(self, *a, **k)

    def count_linear(self, x):
        blocks["qk"] += id(self) in qk
        return linear_forward(self, x)

    monkeypatch.setattr(type(layers[0].mlp), "forward", count_mlp)
    monkeypatch.setattr(nn.Linear, "forward", count_linear)
    layers[0].register_forward_pre_hook(lambda *_: blocks.__setitem__("block0", blocks["block0"] + 1))
    attribute(rm, rec, nodes, batch_size=4)
    assert nodes.n_lat + nodes.n_logit > 4 * 10  # more than ten chunks, one forward
    assert blocks == {"block0": 3, "mlp": 0, "qk": 0}
