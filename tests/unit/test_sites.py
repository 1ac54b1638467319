"""Site addressing, capture, patch and stop-after on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.sites import SiteError, capture, parse_site, patch, resolve_sites, run_to_sites, stop_after


def _ids(lm, n=2, t=12):
    return torch.randint(0, 1000, (n, t), generator=torch.Generator().manual_seed(1))


def _all_hooks(model: nn.Module) -> int:
    n = len(nn.modules.module._global_forward_pre_hooks) + len(nn.modules.module._global_forward_hooks)
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return n


def test_parse_roundtrip():
    for s in ["model.layers.6", "model.layers.6.mlp:input", "model.layers.6.self_attn:output.0", "x:input.1"]:
        assert str(parse_site(s)) == s
    assert parse_site("a.b:output").io == "output" and str(parse_site("a.b:output")) == "a.b"


def test_resid_capture_equals_hidden_states(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    with torch.no_grad(), capture(model, ["resid_post.*", "resid_pre.0"]) as acts:
        out = model(ids, output_hidden_states=True)
    assert torch.equal(acts["model.layers.0:input"], out.hidden_states[0])
    n = model.config.num_hidden_layers
    for i in range(n - 1):  # the last hidden state is after the final norm in HF
        assert torch.equal(acts[f"model.layers.{i}"], out.hidden_states[i + 1])


def test_identity_patch_keeps_logits_and_zero_changes_them(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    with torch.no_grad():
        clean = model(ids).logits
        with patch(model, "resid_post.1", lambda a: a):
            same = model(ids).logits
        with patch(model, "resid_post.1", "zero"):
            zeroed = model(ids).logits
    assert torch.equal(clean, same)
    assert (clean - zeroed).abs().max() > 1e-3


def test_patch_modes(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    site = "model.layers.1.mlp"
    with torch.no_grad(), capture(model, site) as acts:
        model(ids)
    a = acts[site]
    mean = a.mean((0, 1))
    for mode, value, expect in [
        ("mean", mean, mean.expand_as(a)),
        ("add", torch.ones_like(mean), a + 1),
        ("replace", a * 2, a * 2),
        ("resample", a.flip(0), a.flip(0)),
    ]:
        with torch.no_grad(), patch(model, site, mode, value), capture(model, site) as got:
            model(ids)
        assert torch.allclose(got[site], expect), mode


def test_patch_shape_mismatch_names_site_and_shapes(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    with pytest.raises(SiteError) as e, torch.no_grad(), patch(model, "resid_post.1", "replace", torch.zeros(7)):
        model(ids)
    msg = str(e.value)
    assert "model.layers.1" in msg and "(7,)" in msg and "(2, 12, 64)" in msg


def test_hooks_removed_after_exception(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    before = _all_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, "resid_post.*"), patch(model, "resid_post.0", "zero"), stop_after(model, "resid_post.1"):
            assert _all_hooks(model) > before
            raise RuntimeError("boom")
    assert _all_hooks(model) == before

    def explode(act):
        raise RuntimeError("boom inside the forward pass")

    with pytest.raises(RuntimeError, match="inside the forward"), torch.no_grad():
        with capture(model, "resid_post.*"), patch(model, "resid_post.0", explode):
            model(ids)
    assert _all_hooks(model) == before


def test_stop_after_matches_full_pass_and_stops_early(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    with torch.no_grad(), capture(model, "resid_post.1") as full:
        model(ids)
    calls = []
    h = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    late = model.model.layers[2].register_forward_hook(lambda *a: calls.append(2))
    try:
        got = run_to_sites(model, "resid_post.1", ids)
    finally:
        h.remove(), late.remove()
    assert torch.equal(got["model.layers.1"], full["model.layers.1"])
    assert calls == []  # nothing after the site ran


def test_unknown_site_fails_before_forward_with_suggestions(tiny_tok_lm):
    model = tiny_tok_lm.model
    calls = []
    h = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(SiteError, match="did you mean 'model.layers.1'"):
            with capture(model, "model.layer.1"):
                model(_ids(tiny_tok_lm))
        with pytest.raises(SiteError, match="out of range"):
            resolve_sites(model, "resid_post.99")
    finally:
        h.remove()
    assert calls == []


def test_input_site_equals_previous_output(tiny_tok_lm):
    model, ids = tiny_tok_lm.model, _ids(tiny_tok_lm)
    with torch.no_grad(), capture(model, ["resid_pre.1", "resid_post.0", "model.layers.0.self_attn:output.0"]) as acts:
        model(ids)
    assert torch.equal(acts["model.layers.1:input"], acts["model.layers.0"])
    assert acts["model.layers.0.self_attn:output.0"].shape == (2, 12, 64)


def test_any_module_works():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    with torch.no_grad(), capture(net, "*") as acts:
        y = net(x)
    assert set(acts) == {"", "0", "1", "2"} and torch.equal(acts["2"], y)
    assert torch.equal(run_to_sites(net, "1", x)["1"], torch.relu(net[0](x)))


def test_residual_aliases_resolve_to_a_transformer_lens_models_hook_points():
    """TransformerLens is not a dependency: the stub has its module names and forward (checked by hand against
    transformer_lens 3.9's HookedTransformer: the same sites, values equal to run_with_cache's)."""
    from tests.helpers_coverage import hooked_transformer

    tl = hooked_transformer(20)
    got = {
        k: [str(s) for s in resolve_sites(tl, f"{k}.1")]
        for k in ("resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out")
    }
    assert got == {
        "resid_pre": ["blocks.1.hook_resid_pre"],
        "resid_post": ["blocks.1.hook_resid_post"],
        "attn_out": ["blocks.1.hook_attn_out"],
        "mlp_in": ["blocks.1.mlp:input"],
        "mlp_out": ["blocks.1.hook_mlp_out"],
    }
    sites = [s for v in got.values() for s in v] + ["blocks.1.ln2.hook_normalized"]
    with torch.no_grad(), capture(tl, sites) as a:
        tl(torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(
        a["blocks.1.hook_resid_post"] - a["blocks.1.hook_resid_pre"],
        a["blocks.1.hook_attn_out"] + a["blocks.1.hook_mlp_out"],
    )
    assert torch.equal(a["blocks.1.mlp:input"], a["blocks.1.ln2.hook_normalized"])  # after ln2, unlike TL's hook_mlp_in
    for kind in ("z", "q", "pattern"):
        with pytest.raises(
            SiteError, match=r"per-head hook points .* read them by module path \(e.g. blocks.0.attn.hook_z\)"
        ):
            resolve_sites(tl, f"{kind}.0")
    assert [str(s) for s in resolve_sites(tl, "blocks.*.attn.hook_z")] == [
        "blocks.0.attn.hook_z",
        "blocks.1.attn.hook_z",
    ]
