"""Edge methods on a hand-built model whose true edge set is known: heads with W_O = 0 write nothing, so
every edge from them, and every edge into a head whose write is zero, has effect exactly 0."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits.edges import acdc, eap_effects, exact_edge_effects
from mechscope.circuits.residual import zoo_graph
from mechscope.errors import UsageError
from mechscope.zoo.transformer import TransformerShape, ZooTransformer

DEAD = {"L0H0", "L1H1"}  # heads whose output weights are zero


def model_with_dead_heads() -> ZooTransformer:
    torch.manual_seed(0)
    m = ZooTransformer(
        TransformerShape(
            vocab=12,
            n_out=12,
            n_ctx=8,
            d_model=16,
            n_heads=2,
            d_head=8,
            n_layers=2,
            d_mlp=0,
            layer_norm=False,
            causal=True,
        )
    )
    with torch.no_grad():
        m.blocks[0].attn.W_O[0] = 0
        m.blocks[1].attn.W_O[1] = 0
        m.W_U.mul_(5)
    return m.eval()


def true_edges(graph):
    """Edges that matter: not from a dead head, and not into a dead head's inputs."""
    return {e.name for e in graph.edges if e.writer not in DEAD and e.reader.split(".")[0] not in DEAD}


def metric(logits):
    return logits[:, -1, 3].mean()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 12, (32, 8), generator=g), torch.randint(0, 12, (32, 8), generator=g)


def test_exact_and_eap_find_exactly_the_true_edges_and_eap_is_exact_into_the_logits():
    model, (clean, corrupt) = model_with_dead_heads(), data()
    graph = zoo_graph(model)
    assert len(graph.edges) == 6 * 1 + 6 * 3 + 5  # L0 q/k/v ← embed; L1 q/k/v ← embed, L0H0, L0H1; logits ← all 5
    truth = true_edges(graph)
    exact = exact_edge_effects(model, graph, clean, corrupt, metric)
    eap = eap_effects(model, graph, clean, corrupt, metric)
    for e, x, a in zip(graph.edges, exact.effects, eap.effects):
        if e.name in truth:
            assert abs(float(x)) > 1e-4, e.name
        else:
            assert abs(float(x)) < 1e-6 and abs(float(a)) < 1e-6, e.name
        if e.reader == "logits":  # no norm: the logits are linear in the final residual, so EAP is exact
            assert float(a) == pytest.approx(float(x), abs=1e-4), e.name
    assert exact.forwards == len(graph.edges) + 3 and (eap.forwards, eap.backwards) == (4, 1)


def test_eap_ig_is_complete_along_the_embedding_path():
    """Integrated gradients on the token embedding: the IG scores of the embedding's edges sum to
    m(corrupt) − m(clean) (completeness) up to the Riemann error of K right-endpoint steps, which shrinks
    like 1/K."""
    model, (clean, corrupt) = model_with_dead_heads(), data()
    graph = zoo_graph(model)

    def embed_total(effects):
        return sum(float(s) for e, s in zip(graph.edges, effects.effects) if e.writer == "embed")

    want = None
    errors = []
    for k in (12, 48):
        ig = eap_effects(model, graph, clean, corrupt, metric, ig_steps=k)
        want = ig.corrupt_metric - ig.clean_metric
        errors.append(abs(embed_total(ig) - want))
    assert errors[1] < 0.35 * errors[0] and errors[1] < 0.25 * abs(want)
    assert (ig.forwards, ig.backwards) == (51, 48)
    eap = eap_effects(model, graph, clean, corrupt, metric)
    assert abs(embed_total(eap) - want) > 2 * errors[1]  # plain EAP is not complete: the check can fail


def test_acdc_keeps_exactly_the_true_edges_at_a_small_threshold():
    model, (clean, corrupt) = model_with_dead_heads(), data()
    graph = zoo_graph(model)
    positions = torch.zeros_like(clean, dtype=torch.bool)
    positions[:, -1] = True
    res = acdc(model, graph, clean, corrupt, positions, threshold=1e-7)
    assert {e.name for e in res.kept} == true_edges(graph)
    loose = acdc(model, graph, clean, corrupt, positions, threshold=10.0)
    assert loose.kept == () and loose.divergence > 0


def test_edge_methods_refuse_bad_input():
    model, (clean, corrupt) = model_with_dead_heads(), data()
    graph = zoo_graph(model)
    with pytest.raises(UsageError, match="positions must align"):
        eap_effects(model, graph, clean, corrupt[:, :6], metric)
    with pytest.raises(UsageError, match="does not depend"):
        eap_effects(model, graph, clean, corrupt, lambda logits: torch.tensor(0.0))
    with pytest.raises(UsageError, match="no edges"):
        exact_edge_effects(model, type(graph)(graph.writers[:0], graph.readers), clean, corrupt, metric)
    with pytest.raises(UsageError, match="boolean"):
        acdc(model, graph, clean, corrupt, torch.zeros_like(clean), 0.1)
