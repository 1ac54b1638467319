"""The per-family facts table on tiny random models of every family: the residual decomposition through the
site aliases, the MLP's input, head widths, per-head patching of z, and refusals by name."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mechscope.circuits.discover import hf_nodes
from mechscope.errors import UsageError
from mechscope.models.families import FAMILIES, block_path, family_of, heads, is_parallel
from mechscope.sites import SiteError, capture, patch, resolve_sites
from tests.helpers_families import SPECS, build as _build


@pytest.fixture(scope="module", params=list(SPECS))
def hf_model(request):
    return _build(request.param)


@pytest.fixture(scope="module")
def zoo_model():
    from mechscope.zoo.transformer import TransformerShape, ZooTransformer

    torch.manual_seed(0)
    s = TransformerShape(
        vocab=20, n_out=20, n_ctx=8, d_model=16, n_heads=2, d_head=4, n_layers=2, d_mlp=32, layer_norm=True, causal=True
    )
    return ZooTransformer(s).eval()


def _ids(vocab=100):
    return torch.randint(0, vocab, (2, 7), generator=torch.Generator().manual_seed(1))


def _decomposition(model, ids):
    n = len(model.get_submodule(block_path(model)))
    sites = {k: resolve_sites(model, f"{k}.*") for k in ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in")}
    with torch.no_grad(), capture(model, [s for v in sites.values() for s in v]) as acts:
        model(ids)
    for L in range(n):
        a = {k: acts[str(v[L])] for k, v in sites.items()}
        update = a["resid_post"] - a["resid_pre"]
        assert torch.allclose(update, a["attn_out"] + a["mlp_out"], atol=1e-5), L
        assert (a["attn_out"] - update).abs().max() > 1e-3  # attention alone is not the whole update
    return acts, sites


def test_residual_decomposition_and_mlp_input(hf_model):
    model = hf_model
    fam = family_of(model)
    acts, sites = _decomposition(model, _ids())
    blocks = model.get_submodule(block_path(model))
    for L, block in enumerate(blocks):
        pre, attn, mlp_in, mlp_out = (acts[str(sites[k][L])] for k in ("resid_pre", "attn_out", "mlp_in", "mlp_out"))
        stream = pre if is_parallel(model) else pre + attn
        norm = block.get_submodule(fam.mlp_norm) if fam.mlp_norm else nn.Identity()
        with torch.no_grad():
            assert torch.allclose(mlp_in, norm(stream), atol=1e-5)  # the MLP reads its pre-norm's output
            written = block.get_submodule(fam.mlp)(mlp_in)
            post = block.get_submodule(fam.mlp_post_norm) if fam.mlp_post_norm else nn.Identity()
            assert torch.allclose(post(written), mlp_out, atol=1e-5)


def _by_formula(kind: str, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a norm of ``kind`` (:attr:`Family.norm_kind`) computes, written out."""
    if kind == "layernorm":
        return nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
    x32 = x.float()
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    scaled = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return scaled * (1 + norm.weight.float()) if kind == "gemma_rmsnorm" else norm.weight * scaled


def test_table_names_the_live_modules_and_their_norm_formula(hf_model):
    model, fam = hf_model, family_of(hf_model)
    model.get_submodule(fam.final_norm)
    block = model.get_submodule(block_path(model))[0]
    optional = set(fam.qk_norm or ()) if fam.name == "phi" else set()  # Phi's exist only with config.qk_layernorm
    for path in set(fam.modules()) - optional:
        block.get_submodule(path)
    x = torch.randn(3, 32)
    for path in (fam.attn_norm, fam.mlp_norm, fam.attn_post_norm, fam.mlp_post_norm, fam.final_norm):
        if path:
            norm = (model if path == fam.final_norm else block).get_submodule(path)
            with torch.no_grad():
                assert torch.allclose(norm(x), _by_formula(fam.norm_kind, norm, x), atol=1e-5), path


def test_attention_reads_its_pre_norm(hf_model):
    model, fam = hf_model, family_of(hf_model)
    base = block_path(model)
    with torch.no_grad(), capture(model, ["resid_pre.1", f"{base}.1.{fam.attn}:input"]) as acts:
        model(_ids())
    pre, attn_in = acts[f"{base}.1:input"], acts[f"{base}.1.{fam.attn}:input"]
    norm = model.get_submodule(f"{base}.1.{fam.attn_norm}") if fam.attn_norm else nn.Identity()
    with torch.no_grad():
        assert torch.allclose(attn_in, norm(pre), atol=1e-5)


def test_gemma2_attn_out_is_after_the_post_norm():
    model = _build("gemma2")
    with torch.no_grad(), capture(model, ["attn_out.0", "model.layers.0.self_attn:output.0"]) as acts:
        model(_ids())
    assert resolve_sites(model, "attn_out.0")[0].module == "model.layers.0.post_attention_layernorm"
    before, after = acts["model.layers.0.self_attn:output.0"], acts["model.layers.0.post_attention_layernorm"]
    assert (before - after).abs().max() > 1e-2


def test_z_width_is_heads_times_head_dim(hf_model):
    model = hf_model
    cfg = model.config
    h = heads(model)
    expected_e = cfg.hidden_size // cfg.num_attention_heads if family_of(model).head_rule == "split" else cfg.head_dim
    assert h.head_dim == expected_e and h.n_heads == cfg.num_attention_heads
    with torch.no_grad(), capture(model, "z.1") as acts:
        model(_ids())
    (z,) = acts.values()
    assert z.shape == (2, 7, h.n_heads * h.head_dim) and h.split(z).shape == (2, 7, h.n_heads, h.head_dim)
    if family_of(model).head_rule == "config":
        assert z.shape[-1] != cfg.hidden_size  # these tiny models have head_dim ≠ hidden/heads on purpose


def _zero_head_by_hand(model, layer: int, head: int) -> torch.Tensor:
    """Logits with head ``head``'s columns of the output projection's weight set to zero."""
    fam = family_of(model)
    proj = model.get_submodule(f"{block_path(model)}.{layer}.{fam.out_proj}")
    start, stop = heads(model).span(head)
    saved = proj.weight.detach().clone()
    try:
        with torch.no_grad():
            if isinstance(proj, nn.Linear):
                proj.weight[:, start:stop] = 0
            else:  # transformers' Conv1D: weight [in, out]
                proj.weight[start:stop, :] = 0
            return model(_ids()).logits
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)


def test_zeroing_a_heads_slice_of_z_is_zeroing_the_head(hf_model):
    model = hf_model
    layer, head = 1, heads(model).n_heads - 1
    node = hf_nodes(model)[f"L{layer}H{head}"]
    assert node.site == str(resolve_sites(model, f"z.{layer}")[0])
    with torch.no_grad():
        clean = model(_ids()).logits
        with patch(model, node.site, lambda a: node.replaced(a, torch.zeros_like(a))):
            patched = model(_ids()).logits
    by_hand = _zero_head_by_hand(model, layer, head)
    assert torch.allclose(patched, by_hand, atol=1e-5)
    assert (patched - clean).abs().max() > 1e-4


@pytest.mark.slow  # exact patching of every head of every family
def test_atp_over_every_head_agrees_with_exact_patching(hf_model):
    from mechscope.circuits.patching import agreement, atp_effects, exact_effects

    g = torch.Generator().manual_seed(3)
    clean, corrupt = torch.randint(0, 100, (4, 6), generator=g), torch.randint(0, 100, (4, 6), generator=g)

    def metric(out):
        return (out.logits[:, -1, 1] - out.logits[:, -1, 2]).mean()

    nodes = list(hf_nodes(hf_model).values())
    exact = exact_effects(hf_model, nodes, clean, corrupt, metric)
    assert agreement(atp_effects(hf_model, nodes, clean, corrupt, metric), exact)["spearman"] > 0.3
    assert (exact.effects != 0).all()  # every head's slice, the whole of z, reaches the output


def test_mlp_nodes_are_the_residual_update(hf_model):
    nodes = hf_nodes(hf_model)
    assert nodes["MLP1"].site == str(resolve_sites(hf_model, "mlp_out.1")[0])


def test_qkv_aliases_where_separate_and_refused_by_name_where_fused(hf_model):
    fam = family_of(hf_model)
    if fam.qkv:
        with torch.no_grad(), capture(hf_model, ["q.0", "k.0"]) as acts:
            hf_model(_ids())
        h = heads(hf_model)
        assert [a.shape[-1] for a in acts.values()] == [h.n_heads * h.head_dim, h.n_kv_heads * h.head_dim]
    else:
        with pytest.raises(SiteError, match=f"{fam.name} models compute q, k and v in one fused projection"):
            resolve_sites(hf_model, "q.0")
    with pytest.raises(SiteError, match="pattern is not a module output"):
        resolve_sites(hf_model, "pattern.0")


def test_gemma3_multimodal_uses_its_language_model():
    import transformers

    torch.manual_seed(0)
    text = dict(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    cfg = transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=299,
        boi_token_index=297,
        eoi_token_index=298,
    )
    model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    assert family_of(model).name == "gemma3" and block_path(model) == "model.language_model.layers"
    assert heads(model).head_dim == 16
    _decomposition(model, _ids())


def test_smollm2_site_strings_unchanged():
    model = _build("llama")
    got = [
        str(s)
        for s in resolve_sites(model, ["resid_pre.1", "resid_post.1", "attn_out.1", "mlp_in.1", "mlp_out.1", "z.1"])
    ]
    assert got == [
        "model.layers.1:input",
        "model.layers.1",
        "model.layers.1.self_attn:output.0",
        "model.layers.1.mlp:input",
        "model.layers.1.mlp",
        "model.layers.1.self_attn.o_proj:input",
    ]


def test_zoo_transformer(zoo_model):
    model = zoo_model
    assert family_of(model).name == "zoo" and heads(model) == (2, 2, 4)
    _decomposition(model, torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(1)))
    assert [str(s) for s in resolve_sites(model, "z.1")] == ["blocks.1.attn.heads.0.z", "blocks.1.attn.heads.1.z"]


def test_attention_only_zoo_model_has_no_mlp_alias():
    from mechscope.zoo.transformer import TransformerShape, ZooTransformer

    s = TransformerShape(
        vocab=20, n_out=20, n_ctx=8, d_model=16, n_heads=2, d_head=4, n_layers=1, d_mlp=0, layer_norm=False, causal=True
    )
    with pytest.raises(SiteError, match="mlp_out.0.*does not have"):
        resolve_sites(ZooTransformer(s), "mlp_out.0")


class _Foreign(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="mamba")
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])


def test_unknown_model_type_refused_by_name():
    model = _Foreign()
    with pytest.raises(UsageError, match="model type 'mamba'.*supported: .*gemma2.*gpt2.*llama"):
        family_of(model)
    with pytest.raises(SiteError, match="alias 'attn_out.0': model type 'mamba'"):
        resolve_sites(model, "attn_out.0")
    with pytest.raises(UsageError, match="cannot list the heads.*'mamba'"):
        hf_nodes(model)
    assert [str(s) for s in resolve_sites(model, "resid_post.1")] == ["layers.1"]  # needs only the block list


def test_a_module_named_like_an_alias_is_the_module():
    net = nn.Module()
    net.v = nn.ModuleList([nn.Linear(2, 2)])
    assert [str(s) for s in resolve_sites(net, "v.0")] == ["v.0"]


def test_head_dim_that_does_not_fit_the_projection_is_refused():
    model = _build("qwen3")
    model.config.head_dim = 8  # what hidden/heads would guess; the projection reads 4 × 16
    with pytest.raises(UsageError, match="o_proj reads 64 features but the config gives 4 heads × 8"):
        heads(model)


def test_graph_refusal_names_the_family():
    import transformers

    from mechscope.graph.freeze import Freezer, _hf_attention

    bloom = transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4))
    with pytest.raises(UsageError, match="'bloom'.*llama, mistral, qwen2, qwen3, gemma2"):  # not in the family table
        with _hf_attention(bloom, Freezer()):
            pass


def test_every_family_row_is_distinct():
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types)) and len({f.name for f in FAMILIES}) == len(FAMILIES)


@pytest.mark.parametrize(
    ("site", "model_type", "hook"),
    [
        ("model.layers.3.self_attn:output.0", "llama", "blocks.3.hook_attn_out"),
        ("model.layers.11.mlp:output", "llama", "blocks.11.hook_mlp_out"),
        ("model.layers.3.self_attn:output.0", "gemma2", None),  # before Gemma's post-attention norm
        ("model.layers.3.post_attention_layernorm", "gemma2", "blocks.3.hook_attn_out"),
        ("model.layers.3.post_attention_layernorm", "llama", None),  # Llama's pre-MLP norm
        ("model.layers.3.post_attention_layernorm", None, None),  # families disagree
        ("transformer.h.2.attn:output.0", None, "blocks.2.hook_attn_out"),
        ("gpt_neox.layers.1.mlp", None, "blocks.1.hook_mlp_out"),
        ("model.layers.4.mlp:input", None, "blocks.4.ln2.hook_normalized"),
    ],
)
def test_transformerlens_hook_of_a_module_path_per_family(site, model_type, hook):
    from mechscope.sae.saelens_names import hook_name

    assert hook_name(site, model_type) == hook
