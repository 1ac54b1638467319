"""Edge methods (exact edge patching, EAP, EAP-IG, ACDC) on tiny random Hugging Face models of every family in
the table (builders shared with test_families): known answers from patches built by hand, agreement of the
gradient methods with exact patching, ACDC's two limits, and refusals by name where a head's write is not a
term of the residual stream."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.circuits.edges import acdc, eap_effects, exact_edge_effects
from mechscope.circuits.residual import Edge, edges_patched, hf_graph, writer_values
from mechscope.errors import UsageError
from mechscope.models.families import block_path, family_of, heads
from mechscope.sites import capture, patch
from tests.helpers_families import SPECS, build as _build

POST_NORM = ("gemma2", "gemma3_text", "olmo2")  # attention's output is normalised as a whole: refused
EDGE_FAMILIES = [n for n in SPECS if n not in POST_NORM]

# Where head h's query sits in the output of the projection that computes it (the hand-built patch's only
# family knowledge): module path inside a block → [start, stop) of head h with head width e.
QUERY = {
    "gpt2": ("attn.c_attn", lambda h, e: (h * e, (h + 1) * e)),  # [q | k | v]
    "gpt_neox": ("attention.query_key_value", lambda h, e: (3 * h * e, 3 * h * e + e)),  # per head [q k v]
    "gpt_neox_sequential": ("attention.query_key_value", lambda h, e: (3 * h * e, 3 * h * e + e)),
    "phi3": ("self_attn.qkv_proj", lambda h, e: (h * e, (h + 1) * e)),
}  # [q | k | v]


def metric(out):
    return (out.logits[:, -1, 1] - out.logits[:, -1, 2]).mean()


def _data(n: int = 4, t: int = 6):
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 100, (n, t), generator=g), torch.randint(0, 100, (n, t), generator=g)


@pytest.fixture(scope="module", params=EDGE_FAMILIES)
def case(request):
    """(family name, model, graph, exact effects of every edge on _data())."""
    model = _build(request.param)
    graph = hf_graph(model)
    clean, corrupt = _data()
    return request.param, model, graph, exact_edge_effects(model, graph, clean, corrupt, metric)


@pytest.mark.slow  # every edge of every family
def test_every_edge_carrying_its_own_value_is_the_model_and_every_edge_corrupted_is_the_corrupted_run(case):
    _, model, graph, _ = case
    clean, corrupt = _data()
    with torch.no_grad():
        base, corrupted = model(clean).logits, model(corrupt).logits
        own, other = writer_values(model, graph, clean), writer_values(model, graph, corrupt)
        with edges_patched(model, graph, list(graph.edges), own):
            same = model(clean).logits
        with edges_patched(model, graph, list(graph.edges), other):
            cut = model(clean).logits  # no path from the clean tokens is left
    assert (same - base).abs().max() < 1e-5 and (cut - corrupted).abs().max() < 1e-5
    assert (corrupted - base).abs().max() > 0.1


def _stream(model, clean, corrupt):
    """Clean stream entering block 1, and the embedding writer's clean and corrupted values."""
    base = block_path(model)
    with torch.no_grad(), capture(model, [f"{base}.0:input", f"{base}.1:input"]) as acts:
        model(clean)
    r1, emb = acts[f"{base}.1:input"], acts[f"{base}.0:input"]
    with torch.no_grad(), capture(model, f"{base}.0:input") as acts:
        model(corrupt)
    return r1, emb, acts[f"{base}.0:input"]


def test_one_edge_into_a_heads_query_is_the_hand_built_patch(case):
    """embed → L1H(last).q by hand: the query projection's slice of head h computed from
    norm(resid − embed + corrupted embed), every other slice untouched."""
    name, model, graph, _ = case
    fam, h = family_of(model), heads(model)
    head = h.n_heads - 1
    clean, corrupt = _data()
    r1, emb, emb_c = _stream(model, clean, corrupt)
    block = model.get_submodule(block_path(model))[1]
    path, span = QUERY.get(name, (fam.qkv[0] if fam.qkv else None, lambda h, e: (h * e, (h + 1) * e)))
    s, e = span(head, h.head_dim)
    with torch.no_grad():
        x_patched = block.get_submodule(fam.attn_norm)(r1 - emb + emb_c)
        wanted = block.get_submodule(path)(x_patched)[..., s:e]

        def put(act):
            out = act.clone()
            out[..., s:e] = wanted
            return out

        with patch(model, f"{block_path(model)}.1.{path}", put):
            by_hand = float(metric(model(clean)))
        want = by_hand - float(metric(model(clean)))
    got = exact_edge_effects(model, graph, clean, corrupt, metric, [Edge("embed", f"L1H{head}.q")])
    assert abs(want) > 1e-5
    assert float(got.effects[0]) == pytest.approx(want, rel=1e-3, abs=1e-7)


def test_one_edge_from_a_head_into_the_logits_is_the_hand_built_patch(case):
    """L0H0 → logits by hand: the head's write is the output projection of z with every other head zeroed, less
    the projection's bias; the final norm reads the stream less the clean write plus the corrupted one."""
    _, model, graph, _ = case
    fam, h = family_of(model), heads(model)
    clean, corrupt = _data()
    proj = model.get_submodule(f"{block_path(model)}.0.{fam.out_proj}")
    final = model.get_submodule(fam.final_norm)
    s, e = h.span(0)

    def write(tokens):
        with (
            torch.no_grad(),
            capture(model, [f"{block_path(model)}.0.{fam.out_proj}:input", f"{fam.final_norm}:input"]) as acts,
        ):
            model(tokens)
        z = acts[f"{block_path(model)}.0.{fam.out_proj}:input"]
        alone = torch.zeros_like(z)
        alone[..., s:e] = z[..., s:e]
        return proj(alone) - proj(torch.zeros_like(z)), acts[f"{fam.final_norm}:input"]

    with torch.no_grad():
        a, resid = write(clean)
        a_c, _ = write(corrupt)
        logits = model.get_output_embeddings()(final(resid - a + a_c))
        want = float((logits[:, -1, 1] - logits[:, -1, 2]).mean() - metric(model(clean)))
    got = exact_edge_effects(model, graph, clean, corrupt, metric, [Edge("L0H0", "logits")])
    assert abs(want) > 1e-5
    assert float(got.effects[0]) == pytest.approx(want, rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("part", ["q", "k", "v"])
def test_a_heads_input_patched_alone_leaves_every_other_head(case, part):
    """Under grouped-query attention head 0 shares its key and value with head 1; patching head 0's key must
    still leave head 1's output (its slice of z) as it was."""
    _, model, graph, _ = case
    fam, h = family_of(model), heads(model)
    clean, corrupt = _data()
    z = f"{block_path(model)}.1.{fam.out_proj}:input"
    source = writer_values(model, graph, corrupt)
    with torch.no_grad():
        with capture(model, z) as acts:
            model(clean)
        before = h.split(acts[z])
        with capture(model, z) as acts, edges_patched(model, graph, [Edge("embed", f"L1H0.{part}")], source):
            model(clean)
        after = h.split(acts[z])
    changed = (after - before).abs().amax(dim=(0, 1, 3))  # [heads]
    assert changed[0] > 1e-4 and changed[1:].max() == 0


def test_parallel_blocks_join_no_head_to_its_own_layers_mlp(case):
    name, model, graph, _ = case
    edges = {e.name for e in graph.edges}
    parallel = name in ("phi", "gpt_neox")
    assert ("L0H0->MLP0.in" in edges) is not parallel and "L0H0->MLP1.in" in edges and "MLP0->L1H0.q" in edges
    n_heads, n = heads(model).n_heads, 2
    writers = 1 + n * (n_heads + 1)
    assert len(graph.writers) == writers and len(graph.readers) == n * (3 * n_heads + 1) + 1


def test_eap_and_eap_ig_rank_edges_like_exact_patching(case):
    """Thresholds (measured on these models, 4 × 6 tokens): EAP's Spearman ρ with exact edge effects was 0.77–0.90
    (required ≥ 0.6); EAP-IG's (K = 5) Pearson r 0.82–0.99 (required ≥ 0.7)."""
    from scipy.stats import pearsonr, spearmanr

    _, model, graph, exact = case
    clean, corrupt = _data()
    eap = eap_effects(model, graph, clean, corrupt, metric)
    ig = eap_effects(model, graph, clean, corrupt, metric, ig_steps=5)
    x = exact.effects.numpy()
    assert spearmanr(eap.effects.numpy(), x).statistic >= 0.6
    assert pearsonr(ig.effects.numpy(), x).statistic >= 0.7
    assert eap.clean_metric == pytest.approx(exact.clean_metric, abs=1e-5)


@pytest.mark.slow  # ACDC on every family
def test_acdc_keeps_every_edge_with_an_effect_at_threshold_zero_and_none_at_a_huge_one(case):
    _, model, graph, exact = case
    clean, corrupt = _data()
    positions = torch.zeros_like(clean, dtype=torch.bool)
    positions[:, -1] = True
    kept = set(acdc(model, graph, clean, corrupt, positions, 0.0).kept)
    assert {e for e, x in zip(graph.edges, exact.effects) if x != 0} <= kept
    assert acdc(model, graph, clean, corrupt, positions, 1e9).kept == ()


def _kill_head(model, layer: int, head: int) -> None:
    """Zero head ``head``'s columns of layer ``layer``'s output projection: it writes nothing."""
    proj = model.get_submodule(f"{block_path(model)}.{layer}.{family_of(model).out_proj}")
    s, e = heads(model).span(head)
    with torch.no_grad():
        if isinstance(proj, nn.Linear):
            proj.weight[:, s:e] = 0
        else:  # Conv1D, weight [in, out]
            proj.weight[s:e] = 0


@pytest.mark.slow  # ACDC on several families
@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox"])
def test_edges_of_a_dead_head_have_no_effect_and_acdc_drops_exactly_them(name):
    model = _build(name)
    _kill_head(model, 0, 1)
    graph = hf_graph(model)
    clean, corrupt = _data()
    exact = exact_edge_effects(model, graph, clean, corrupt, metric)
    dead = {e for e in graph.edges if e.writer == "L0H1" or e.reader.startswith("L0H1.")}
    live = {e for e, x in zip(graph.edges, exact.effects) if x != 0}
    assert (
        not live & dead and len(live) > len(graph.edges) // 2
    )  # (GPT-2's small init leaves a few live edges below float32's resolution)
    positions = torch.zeros_like(clean, dtype=torch.bool)
    positions[:, -1] = True
    kept = set(acdc(model, graph, clean, corrupt, positions, 1e-30).kept)
    assert not kept & dead and live <= kept


@pytest.mark.parametrize("name", POST_NORM)
def test_families_with_a_post_attention_norm_are_refused_by_name(name):
    with pytest.raises(UsageError, match=f"{name} models normalise attention's output as a whole"):
        hf_graph(_build(name))


# ---- AtP*'s attention fix on Hugging Face attention ------------------------------------------------------

SEPARATE_QK = [
    "llama",
    "qwen3",
    "gemma2",
    "phi",
]  # grouped-query or not, per-head q/k norms, softcapping, partial rotary


def _qk_nodes(model):
    from mechscope.circuits.discover import hf_nodes

    return {k: v for k, v in hf_nodes(model, qkv=True).items() if k.endswith((".q", ".k"))}


@pytest.mark.parametrize("name", SEPARATE_QK)
def test_the_attention_fix_pattern_is_the_pattern_of_the_patched_forward(name):
    """A' for a query (key) node is what the model's attention computes when that head's query (key) slice is
    patched with its corrupted value, read from the patched forward itself."""
    from mechscope.circuits.atpstar import _deltas
    from mechscope.circuits.hf import attention_patterns

    model = _build(name)
    clean, corrupt = _data()
    nodes = _qk_nodes(model)
    shared = "KV" if heads(model).n_kv_heads < heads(model).n_heads else "H"
    picked = [nodes["L1H1.q"], nodes[f"L1{shared}0.k"]]
    deltas, _, _ = _deltas(model, picked, clean, corrupt, attention_fix=True)
    attn = f"{block_path(model)}.1.{family_of(model).attn}"
    with torch.no_grad():
        with capture(model, [n.site for n in picked]) as acts:
            model(corrupt)
        corrupted = dict(acts)
        with attention_patterns(model, [attn]) as calls:
            model(clean)
            before = calls[attn].pattern
            for node, (key, delta) in zip(picked, deltas):
                with patch(model, node.site, lambda a, n=node: n.replaced(a, corrupted[n.site])):
                    model(clean)
                assert key == f"{attn}:pattern" and delta.abs().max() > 1e-3
                assert torch.allclose(delta, calls[attn].pattern - before, atol=1e-6)


@pytest.mark.parametrize("name", SEPARATE_QK)
def test_reading_the_pattern_changes_nothing_and_its_gradient_is_live(name):
    from mechscope.circuits.hf import attention_patterns

    model = _build(name)
    clean, _ = _data()
    attn = f"{block_path(model)}.0.{family_of(model).attn}"
    with torch.no_grad():
        plain = model(clean).logits
    with attention_patterns(model, [attn], leaves=True) as calls:
        out = model(clean).logits
        (g,) = torch.autograd.grad(metric(type("O", (), {"logits": out})()), [calls[attn].leaf])
    assert (out - plain).abs().max() < 1e-5 and g.abs().max() > 0


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3_text", "phi"])
def test_the_attention_fix_is_closer_to_exact_patching_than_atp_on_saturated_attention(name):
    """Query and key weights × 12 saturate the softmax. Measured Σ|estimate − exact| over the q/k nodes, AtP* vs
    AtP: llama 0.13 vs 0.27, qwen3 0.026 vs 0.19, gemma3 0.020 vs 0.060, phi 0.079 vs 0.23 (required: ≤ 0.7×)."""
    from mechscope.circuits.atpstar import atp_star_effects
    from mechscope.circuits.patching import atp_effects, exact_effects

    model = _build(name)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(12)
    clean, corrupt = _data()
    nodes = list(_qk_nodes(model).values())
    exact = exact_effects(model, nodes, clean, corrupt, metric).effects
    star = atp_star_effects(model, nodes, clean, corrupt, metric, grad_drop=False).effects
    atp = atp_effects(model, nodes, clean, corrupt, metric).effects
    assert (star - exact).abs().sum() <= 0.7 * (atp - exact).abs().sum()


def test_graddrop_on_a_hugging_face_model_freezes_each_layers_residual_writes():
    from mechscope.circuits.atpstar import atp_star_effects, layer_writes

    model = _build("llama")
    assert layer_writes(model) == [[f"model.layers.{i}.self_attn:output.0", f"model.layers.{i}.mlp"] for i in (0, 1)]
    clean, corrupt = _data()
    star = atp_star_effects(model, list(_qk_nodes(model).values())[:3], clean, corrupt, metric)
    assert not star.signed and (star.forwards, star.backwards) == (5, 3) and (star.effects > 0).all()


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("gpt2", "gpt2 models compute every head's query, key and value in one fused projection"),
        ("phi3", "phi3 models compute every head's query, key and value in one fused projection"),
        ("olmo2", "olmo2 models normalise the queries and keys of all heads together"),
    ],
)
def test_the_attention_fix_is_refused_by_name_where_heads_queries_are_not_readable(name, match):
    from mechscope.circuits.discover import DiscoverConfig, discover
    from mechscope.circuits.tasks import CircuitTask

    model = _build(name)
    clean, corrupt = _data()
    task = CircuitTask("t", clean, corrupt, metric, "m", None, torch.zeros(4, dtype=torch.long), clean > 0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=match):
        discover(model, task, DiscoverConfig(method="atp*", budget=0))


# ---- a user's own task from prompt pairs -------------------------------------------------------------------


def test_a_task_from_prompt_pairs_is_a_few_lines_and_refuses_what_cannot_align(tiny_tok_lm, tmp_path):
    from mechscope.circuits.tasks import PromptPair, load_pairs, pairs_task

    model, tok = tiny_tok_lm.model, tiny_tok_lm.tokenizer
    pairs = [
        PromptPair(
            "When Mary and John went out, John gave it to",
            "When Anna and Tom went out, Tom gave it to",
            " Mary",
            " John",
        ),
        PromptPair(
            "When Paul and Kate went out, Kate gave it to",
            "When Mark and Lisa went out, Lisa gave it to",
            " Paul",
            " Kate",
        ),
    ]
    task = pairs_task(model, tok, pairs)
    with torch.no_grad():
        last = model(task.clean).logits[:, -1]
    ids = [[tok.encode(w, add_special_tokens=False)[0] for w in (p.answer, p.wrong)] for p in pairs]
    want = sum(float(last[i, a] - last[i, b]) for i, (a, b) in enumerate(ids)) / 2
    with torch.no_grad():
        assert float(task.metric(model(task.clean))) == pytest.approx(want, abs=1e-5)
    assert task.clean.shape == task.corrupt.shape and task.kl_positions[:, -1].all() and task.kl_positions.sum() == 2
    assert task.targets.tolist() == [a for a, _ in ids] and task.rock().shape == (2,)
    no_wrong = pairs_task(model, tok, [PromptPair(p.clean, p.corrupt, p.answer) for p in pairs])
    assert no_wrong.metric_name == "mean log p(answer) at the last token"

    f = tmp_path / "pairs.json"
    f.write_text(
        '[{"clean": "a b", "corrupt": "a c", "answer": " d"}, {"clean": "a e", "corrupt": "a f", "answer": " g"}]'
    )
    assert [p.answer for p in load_pairs(f)] == [" d", " g"]
    longer = PromptPair(pairs[1].clean, pairs[1].corrupt + " him", " Paul", " Kate")
    for bad, match in [
        ([pairs[0], longer], "pair 1: the clean prompt is 11 tokens and the corrupted one 12"),
        (
            [pairs[0], PromptPair("x " + pairs[1].clean, "x " + pairs[1].corrupt, " Paul", " Kate")],
            "pair 1 is 12 tokens but pair 0 is 11",
        ),
        (
            [pairs[0], PromptPair(pairs[1].clean, pairs[1].corrupt, " Paulinette", " Kate")],
            r"pair 1: answer ' Paulinette' is \d tokens",
        ),
        ([pairs[0], PromptPair(pairs[1].clean, pairs[1].corrupt, " Paul")], "either every pair names a wrong answer"),
        (pairs[:1], "at least 2 prompt pairs"),
    ]:
        with pytest.raises(UsageError, match=match):
            pairs_task(model, tok, bad)
    f.write_text('{"pairs": [{"clean": "a", "corrupt": "b"}]}')
    with pytest.raises(UsageError, match=r"pairs\.json, pair 0: expected an object with keys clean, corrupt, answer"):
        load_pairs(f)


@pytest.mark.parametrize("method", ["atp*", "eap", "acdc"])
def test_discover_runs_node_and_edge_methods_on_a_hugging_face_model(method):
    from mechscope.circuits.discover import DiscoverConfig, discover
    from mechscope.circuits.tasks import CircuitTask
    from mechscope.task import Task

    model = _build("llama")
    clean, corrupt = _data(8)
    with torch.no_grad():
        answers = model(clean).logits[:, -1].argmax(-1)  # the model's own answers: ablation costs it loss
    scoring = Task("t", clean, answers, clean, answers, positions=(-1,), n_classes=100)
    task = CircuitTask(
        "t", clean, corrupt, metric, "logit 1 − logit 2", scoring, answers, torch.ones_like(clean, dtype=torch.bool)
    )
    r = discover(model, task, DiscoverConfig(method=method, top=8, budget=6, threshold=1e-4))
    assert r["agreement_with_exact"]["budget"] == 6 and r["faithfulness"]["loss_full"] < r["faithfulness"]["loss_empty"]
    if method == "atp*":
        assert {"L1H0.q", "L1KV0.k", "L1KV1.v"} <= {s["name"] for s in r["scores"]} and len(r["nodes"]) == 8
    else:
        assert 0 < len(r["edges"]) and {w["name"] for w in r["graph"]["writers"]} >= {"embed", "L1H3", "MLP1"}
        assert r["faithfulness"]["edges_total"] == len(hf_graph(model).edges)


def test_eager_attention_without_the_familys_eager_function_is_refused_by_name():
    # An attention module whose own module defines no eager_attention_forward: transformers would hand back
    # the missing default (None), and the forward would fail later on calling it.
    from mechscope.circuits.hf import _delegate
    from mechscope.errors import MechscopeError

    class Attention(nn.Module):
        pass

    with pytest.raises(MechscopeError, match="Attention runs eager attention.*eager_attention_forward"):
        _delegate(Attention(), "eager")
    assert callable(_delegate(Attention(), "sdpa"))
