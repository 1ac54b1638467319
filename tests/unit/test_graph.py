"""Known answers for attribution graphs (mechscope.graph).

- Closed form: on a zoo transformer without LayerNorm, the direct effect of a layer-0 latent on a layer-1
  latent is a·(W_dec0[j] + Σ_h A1_h[p_t, p_s] W_dec0[j] W_V[h] W_O[h])·W_enc1[:, i] (residual path at
  p_t = p_s plus every head's OV path under the frozen pattern), and a token's effect on a layer-0 latent
  likewise with h_0[p_s] for a·W_dec0[j]. The adjacency must equal it entry by entry.
- Exactness: edges + constant = every target's value, and the replay with error nodes = the model's logits,
  on a LayerNorm zoo transformer and on a small Llama (RMSNorm, grouped-query attention, rotary); with
  attention left live the same check fails (it can fail).
- Pruning and scores on a 4-node graph whose influence, replacement and completeness are worked by hand.
"""

from __future__ import annotations

import pytest
import torch

from mechscope.graph.attribute import Nodes, attribute, check_exact, select_nodes
from mechscope.graph.prune import influence, logit_weights, normalise_rows, prune, scores
from mechscope.graph.replacement import LayerTranscoder, ReplacementModel
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE
from mechscope.zoo.transformer import TransformerShape, ZooTransformer
from tests.helpers_graph import random_transcoders


def _zoo(layer_norm: bool, seed: int = 0) -> ZooTransformer:
    torch.manual_seed(seed)
    s = TransformerShape(
        vocab=12,
        n_out=12,
        n_ctx=8,
        d_model=16,
        n_heads=2,
        d_head=8,
        n_layers=2,
        d_mlp=32,
        layer_norm=layer_norm,
        causal=True,
    )
    m = ZooTransformer(s)
    with torch.no_grad():
        for name, prm in m.named_parameters():
            if prm.dim() == 1 and "ln" not in name:
                prm.normal_(0, 0.3)  # non-zero biases, so the constant terms matter
    return m.eval().requires_grad_(False)


def _graph(model, tcs, ids, freeze=True):
    rm = ReplacementModel(model, tcs, freeze_attention=freeze)
    rec = rm.record(ids)
    nodes = select_nodes(rec, max_logits=4, logit_probability=0.9)
    return rm, rec, nodes, attribute(rm, rec, nodes, batch_size=16)


def test_edges_match_closed_form_without_layernorm():
    model = _zoo(layer_norm=False)
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=False)
    ids = torch.tensor([3, 1, 4, 1, 5, 9])
    rm, rec, n, att = _graph(model, tcs, ids)
    assert n.n_lat > 20
    attn1 = model.blocks[1].attn
    A1 = rm.freezer.store  # recorded patterns, one [1, T, T] per head
    OV = [attn1.W_V[h] @ attn1.W_O[h] for h in range(2)]  # [d, d]
    pats1 = [A1[f"blocks.1.attn.heads.{h}.pattern"][0] for h in range(2)]
    pats0 = [A1[f"blocks.0.attn.heads.{h}.pattern"][0] for h in range(2)]
    OV0 = [model.blocks[0].attn.W_V[h] @ model.blocks[0].attn.W_O[h] for h in range(2)]
    checked = 0
    for t in range(n.n_lat):
        lt, pt, it = int(n.layer[t]), int(n.pos[t]), int(n.latent[t])
        w_enc = tcs[lt].sae.W_enc[:, it]
        if lt == 1:
            for s in range(n.n_lat):
                if int(n.layer[s]) != 0:
                    continue
                ps, js = int(n.pos[s]), int(n.latent[s])
                v = n.act[s] * tcs[0].sae.W_dec[js]
                write = v * (ps == pt) + sum(pats1[h][pt, ps] * (v @ OV[h]) for h in range(2))
                assert float(att.adjacency[t, s]) == pytest.approx(float(write @ w_enc), abs=1e-5)
                checked += 1
        else:
            for ps in range(len(ids)):
                h0 = rec.emb[ps]
                write = h0 * (ps == pt) + sum(pats0[h][pt, ps] * (h0 @ OV0[h]) for h in range(2))
                assert float(att.adjacency[t, n.token_index(ps)]) == pytest.approx(float(write @ w_enc), abs=1e-5)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("skip", [False, True, "jumprelu"])
def test_exact_on_layernorm_zoo_and_fails_with_live_attention(skip):
    model = _zoo(layer_norm=True, seed=1)
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=skip, seed=1)
    ids = torch.tensor([2, 7, 1, 8, 2, 8, 1])
    rm, rec, n, att = _graph(model, tcs, ids)
    assert n.n_lat > 20  # latents to attribute through (JumpReLU: those above their threshold)
    c = check_exact(att, rec, rm)
    scale = float(rec.logits.abs().max())
    assert c["max_relative_residual"] < 1e-5 and c["max_logit_gap"] < 1e-5 * max(scale, 1.0), (c, scale)
    rm, rec, n, att = _graph(model, tcs, ids, freeze=False)
    bad = check_exact(att, rec, rm)
    assert bad["max_relative_residual"] > 1e-2, bad  # not linear any more: edges + constant miss the value


def test_exact_on_small_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval().requires_grad_(False)
    tcs = random_transcoders([f"model.layers.{l}.mlp" for l in range(2)], 32, skip=True, seed=2, scale=0.05)
    ids = torch.tensor([1, 5, 9, 13, 5, 9])
    rm, rec, n, att = _graph(model, tcs, ids)
    assert n.n_lat > 20
    with torch.no_grad():
        clean = model(input_ids=ids[None]).logits[0]
    assert float((rec.logits - clean).abs().max()) < 1e-4  # our frozen attention records what the model computes
    c = check_exact(att, rec, rm)
    scale = float(rec.logits.abs().max())
    assert c["max_relative_residual"] < 1e-5 and c["max_logit_gap"] < 1e-5 * max(scale, 1.0), (c, scale)


def test_bos_as_constant_moves_exactly_the_bos_edges_into_the_constant():
    # known answer: with position 0 part of the constant, each target's c_t grows by exactly the sum of the edges
    # it received from position 0's latents, error nodes and token node, and nothing else changes
    model = _zoo(layer_norm=True, seed=3)
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=True, seed=3)
    ids = torch.tensor([0, 7, 1, 8, 2, 8, 1])
    rm = ReplacementModel(model, tcs)
    rec = rm.record(ids)
    plain_n = select_nodes(rec, max_logits=4, logit_probability=0.9)
    bos_n = select_nodes(rec, max_logits=4, logit_probability=0.9, const_pos0=True)
    plain, bos = attribute(rm, rec, plain_n, batch_size=16), attribute(rm, rec, bos_n, batch_size=16)
    assert int((plain_n.pos == 0).sum()) > 3 and int((bos_n.pos == 0).sum()) == 0
    for att in (plain, bos):
        c = check_exact(att, rec, rm)
        assert c["max_relative_residual"] < 1e-5, c
    # map the BOS graph's nodes onto the plain graph's: latents by (layer, pos, latent), then errors, tokens, logits
    key = {(int(l), int(p), int(i)): j for j, (l, p, i) in enumerate(zip(plain_n.layer, plain_n.pos, plain_n.latent))}
    lat = torch.tensor([key[(int(l), int(p), int(i))] for l, p, i in zip(bos_n.layer, bos_n.pos, bos_n.latent)])
    tail = torch.arange(plain_n.n_err + plain_n.T + plain_n.n_logit) + plain_n.n_lat
    m = torch.cat([lat, tail])  # bos node j ↔ plain node m[j]
    at_bos = torch.zeros(plain_n.size, dtype=torch.bool)
    at_bos[: plain_n.n_lat] = plain_n.pos == 0
    at_bos[[plain_n.error_index(l, 0) for l in range(2)] + [plain_n.token_index(0)]] = True
    targets = ~torch.isnan(bos.bias)
    moved = plain.adjacency[m[targets]][:, at_bos].sum(1)
    assert torch.allclose(bos.bias[targets], plain.bias[m[targets]] + moved, atol=1e-6)
    assert float(moved.abs().max()) > 1e-2  # BOS did feed these targets
    kept = plain.adjacency[m][:, m]  # edges between nodes both graphs have
    kept[:, at_bos[m]] = 0
    assert torch.allclose(bos.adjacency, kept, atol=1e-9)
    pr = prune(bos.adjacency, bos_n, 0.8, 0.98)
    assert not bool(pr.node_mask[bos_n.token_index(0)]) and bool(pr.node_mask[bos_n.token_index(1)])
    # the replacement model with BOS exact reproduces the model at position 0, and only there
    with torch.no_grad():
        exact0, replaced = rm.spliced_logits(ids, exact_pos0=True), rm.spliced_logits(ids)
    assert torch.allclose(exact0[0], rec.logits[0], atol=1e-5) and not torch.allclose(
        replaced[0], rec.logits[0], atol=1e-3
    )


def test_circuit_tracer_bos_moves_only_bos_latents_and_errors_into_the_constant():
    # known answer (circuit-tracer 0.5.0's convention): BOS's latents and error nodes join c_t, its token node keeps
    # exactly the edges it has when BOS is a position, and pruning always keeps it
    model = _zoo(layer_norm=True, seed=3)
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=True, seed=3)
    ids = torch.tensor([0, 7, 1, 8, 2, 8, 1])
    rm = ReplacementModel(model, tcs)
    rec = rm.record(ids)
    plain_n = select_nodes(rec, max_logits=4, logit_probability=0.9)
    ct_n = select_nodes(rec, max_logits=4, logit_probability=0.9, const_pos0=True, bos_token_node=True)
    plain, ct = attribute(rm, rec, plain_n, batch_size=16), attribute(rm, rec, ct_n, batch_size=16)
    assert ct_n.bos_token_node and int((ct_n.pos == 0).sum()) == 0
    assert check_exact(ct, rec, rm)["max_relative_residual"] < 1e-5
    key = {(int(l), int(p), int(i)): j for j, (l, p, i) in enumerate(zip(plain_n.layer, plain_n.pos, plain_n.latent))}
    lat = torch.tensor([key[(int(l), int(p), int(i))] for l, p, i in zip(ct_n.layer, ct_n.pos, ct_n.latent)])
    m = torch.cat([lat, torch.arange(plain_n.n_err + plain_n.T + plain_n.n_logit) + plain_n.n_lat])
    bos_mlp = torch.zeros(plain_n.size, dtype=torch.bool)  # BOS's latents and error nodes, not its token node
    bos_mlp[: plain_n.n_lat] = plain_n.pos == 0
    bos_mlp[[plain_n.error_index(l, 0) for l in range(2)]] = True
    targets = ~torch.isnan(ct.bias)
    moved = plain.adjacency[m[targets]][:, bos_mlp].sum(1)
    assert torch.allclose(ct.bias[targets], plain.bias[m[targets]] + moved, atol=1e-6)
    tok0 = plain.adjacency[m, plain_n.token_index(0)]
    assert float(tok0.abs().max()) > 1e-2 and torch.allclose(ct.adjacency[:, ct_n.token_index(0)], tok0, atol=1e-9)
    kept = plain.adjacency[m][:, m]
    kept[:, bos_mlp[m]] = 0
    assert torch.allclose(ct.adjacency, kept, atol=1e-9)
    pr = prune(ct.adjacency, ct_n, 0.5, 0.5)
    assert bool(pr.node_mask[ct_n.token_index(0)])  # circuit-tracer keeps every token node


def _tiny_nodes() -> Nodes:
    """1 latent (layer 0, pos 0), 1 layer × 1 position of errors, 1 token, 1 logit (probability 1)."""
    z = torch.zeros(1, dtype=torch.long)
    return Nodes(z, z, z, z, torch.ones(1), 1, 1, torch.zeros(1, dtype=torch.long), torch.ones(1))


def test_influence_scores_and_pruning_by_hand():
    n = _tiny_nodes()  # order: latent 0, error 1, token 2, logit 3
    A = torch.zeros(4, 4, dtype=torch.float64)
    A[3, 0], A[3, 1], A[0, 2] = 3.0, -1.0, 2.0  # logit ← latent (3), logit ← error (−1), latent ← token (2)
    infl = influence(normalise_rows(A), logit_weights(n))
    assert infl.tolist() == pytest.approx([0.75, 0.25, 0.75, 0.0])
    s = scores(A, n)
    assert s["replacement_score"] == pytest.approx(0.75)
    assert s["completeness_score"] == pytest.approx(2.5 / 2.75)
    p = prune(A, n, node_threshold=0.5, edge_threshold=1.0)
    assert p.node_mask.tolist() == [True, False, True, True]  # the error node carries 0.25 < the cut
    assert p.edge_mask[3, 0] and p.edge_mask[0, 2] and not p.edge_mask[3, 1]


def _clt(d: int, seed: int, cross: bool):
    from mechscope.sae.clt import CLTConfig, CrossLayerTranscoderSAE

    g = torch.Generator().manual_seed(seed)
    clt = CrossLayerTranscoderSAE(CLTConfig(d_in=2 * d, latents=2 * 24, k=5, layers=2, d_out=2 * d))
    with torch.no_grad():
        for prm in (clt.W_enc, clt.W_dec, clt.b_enc, clt.b_dec):
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.5)
        clt.b_enc.add_(1.0)
        if not cross:
            clt.W_dec[:24, d:] = 0  # layer 0's latents write nothing to layer 1: a pair of per-layer transcoders
    return clt


def test_cross_layer_transcoder_graph_is_exact_and_reduces_to_per_layer():
    from mechscope.graph.replacement import CLTLayer

    model = _zoo(layer_norm=True, seed=3)
    ids = torch.tensor([4, 4, 2, 9, 1, 7])
    clt = _clt(16, 3, cross=True).eval().requires_grad_(False)
    views = [CLTLayer(l, f"blocks.{l}.mlp", clt) for l in range(2)]
    rm, rec, n, att = _graph(model, views, ids)
    c = check_exact(att, rec, rm)
    scale = float(rec.logits.abs().max())
    assert c["max_relative_residual"] < 1e-5 and c["max_logit_gap"] < 1e-5 * max(scale, 1.0), (c, scale)
    # the error of layer 1 is what layer 0's and layer 1's latents together leave out of MLP 1's output
    with torch.no_grad():
        x0, x1 = rec.mlp_in
        y_hat = clt.predict(torch.cat([x0, x1], 1))
    assert torch.allclose(rec.err[1], rec.mlp_out[1] - y_hat[:, 16:], atol=1e-4)
    # without cross-layer writes, the CLT's graph is the graph of its diagonal blocks used as per-layer transcoders
    diag = _clt(16, 3, cross=False).eval().requires_grad_(False)
    plts = []
    for l in range(2):
        sae = TranscoderSAE(TranscoderConfig(d_in=16, latents=24, k=5, d_out=16))
        with torch.no_grad():
            sae.W_enc.copy_(diag.W_enc[l * 16 : (l + 1) * 16, l * 24 : (l + 1) * 24])
            sae.b_enc.copy_(diag.b_enc[l * 24 : (l + 1) * 24])
            sae.W_dec.copy_(diag.W_dec[l * 24 : (l + 1) * 24, l * 16 : (l + 1) * 16])
            sae.b_dec.copy_(diag.b_dec[l * 16 : (l + 1) * 16])
        plts.append(LayerTranscoder(l, f"blocks.{l}.mlp", sae.eval().requires_grad_(False)))
    _, _, n_a, a = _graph(model, [CLTLayer(l, f"blocks.{l}.mlp", diag) for l in range(2)], ids)
    _, _, n_b, b = _graph(model, plts, ids)
    assert n_a.n_lat == n_b.n_lat and torch.allclose(a.adjacency, b.adjacency, atol=1e-5)


def test_top_contexts_find_the_planted_rows():
    from mechscope.graph.dashboard import top_contexts

    torch.manual_seed(0)
    sae = TranscoderSAE(TranscoderConfig(d_in=8, latents=6, k=6, d_out=8))  # k = latents: plain ReLU codes
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(8)[:, :6])
        sae.b_enc.zero_()
    tc = LayerTranscoder(0, "m", sae)
    x = -torch.rand(40, 8)  # every code 0 ...
    x[[7, 23, 31], 2] = torch.tensor([1.0, 3.0, 2.0])  # ... but latent 2 on three rows, largest on row 23

    class Store:  # 4 contexts of 10 tokens, one row per token
        def n_rows(self):
            return 40

        def rows(self, site, a, b):
            return x[a:b]

        def tokens(self):
            return torch.arange(40).reshape(4, 10)

        def row_to_position(self, r):
            return r // 10, r % 10

    got = top_contexts(Store(), tc, [2, 4], rows=40, k=2, decode=lambda t: f"<{t}>", chunk=16)
    assert [c["token"] for c in got[2]] == ["<23>", "<31>"] and got[2][0]["value"] == pytest.approx(3.0)
    assert got[2][0]["before"].endswith("<22>") and got[2][0]["after"].startswith("<24>")
    assert got[4] == []  # never active


def _jumprelu_clt_like(topk_clt):
    """A JumpReLU cross-layer transcoder with ``topk_clt``'s weights and θ = 0: codes ReLU(z), which is also what the
    TopK CLT gives when k is every latent of a layer."""
    from mechscope.sae.clt_jumprelu import JumpReLUCLTConfig, JumpReLUCLTSAE

    c = topk_clt.cfg
    jr = JumpReLUCLTSAE(JumpReLUCLTConfig(d_in=c.d_in, latents=c.latents, layers=c.layers, d_out=c.d_out))
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(jr, name).copy_(getattr(topk_clt, name))
        jr.threshold.zero_()
    return jr.eval().requires_grad_(False)


def test_a_jumprelu_clt_graph_is_the_topk_clt_graph_at_the_same_codes():
    """The graph's CLT view takes its codes from the dictionary's own rule (``layer_codes``): a JumpReLU CLT at θ = 0
    and a TopK CLT with k = all of a layer's latents (both ReLU(z)) give the same exact graph."""
    from mechscope.graph.replacement import CLTLayer
    from mechscope.sae.clt import CLTConfig, CrossLayerTranscoderSAE

    model = _zoo(layer_norm=True, seed=3)
    ids = torch.tensor([4, 4, 2, 9, 1, 7])
    base = _clt(16, 3, cross=True)
    every = CrossLayerTranscoderSAE(CLTConfig(d_in=32, latents=48, k=24, layers=2, d_out=32))
    every.load_state_dict(base.state_dict())
    every = every.eval().requires_grad_(False)
    jr = _jumprelu_clt_like(every)
    _, _, n_a, a = _graph(model, [CLTLayer(l, f"blocks.{l}.mlp", every) for l in range(2)], ids)
    rm, rec, n_b, b = _graph(model, [CLTLayer(l, f"blocks.{l}.mlp", jr) for l in range(2)], ids)
    c = check_exact(b, rec, rm)
    assert c["max_relative_residual"] < 1e-5, c
    assert n_a.n_lat == n_b.n_lat > 10 and torch.allclose(a.adjacency, b.adjacency, atol=1e-5)


def test_find_transcoders_reads_a_clt_by_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    """``graph --transcoders org/name:subfolder`` resolves through huggingface_hub's cache, offline, as models do."""
    from huggingface_hub import constants

    from mechscope.graph.replacement import CLTLayer, find_transcoders
    from mechscope.sae import save_sae

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--clts"
    jr = _jumprelu_clt_like(_clt(16, 3, cross=True))
    save_sae(
        jr,
        repo / "snapshots" / commit / "parens-clt",
        metadata={
            "site": [f"blocks.{l}.mlp:input" for l in range(2)],
            "target_site": [f"blocks.{l}.mlp" for l in range(2)],
        },
    )
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    tcs = find_transcoders(_zoo(layer_norm=True, seed=3), "tiny-org/clts:parens-clt")
    assert [type(t) for t in tcs] == [CLTLayer, CLTLayer] and [t.layer for t in tcs] == [0, 1]
    assert tcs[0].sae.arch == "jumprelu_clt"
    with pytest.raises(Exception, match=r"hf download tiny-org/clts --include 'absent/\*'"):
        find_transcoders(_zoo(layer_norm=True, seed=3), "tiny-org/clts:absent")
