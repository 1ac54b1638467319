"""AtP* on models where its answer is known: the attention fix is exact when the metric is linear in the
pattern, GradDrop equals the patching effects with one layer frozen on a linear model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.circuits import Component, agreement, atp_effects, exact_effects
from mechscope.circuits.atpstar import atp_star_effects
from mechscope.errors import UsageError
from mechscope.sites import capture, patch
from mechscope.zoo.transformer import TransformerShape, ZooTransformer


def saturated_attention(scale: float = 8.0) -> ZooTransformer:
    """One attention-only layer, no LayerNorm: the logits are linear in the pattern once v is fixed, and the
    large query/key weights saturate the softmax."""
    torch.manual_seed(0)
    m = ZooTransformer(
        TransformerShape(
            vocab=10,
            n_out=10,
            n_ctx=8,
            d_model=16,
            n_heads=2,
            d_head=8,
            n_layers=1,
            d_mlp=0,
            layer_norm=False,
            causal=True,
        )
    )
    with torch.no_grad():
        m.blocks[0].attn.W_Q.mul_(scale)
        m.blocks[0].attn.W_K.mul_(scale)
        m.W_U.mul_(10)  # a readable effect size
    return m.eval()


def metric(logits):
    return logits[:, -1, 3].mean()


@pytest.mark.parametrize("which", ["q", "k"])
def test_attention_fix_is_exact_where_atp_misses_a_saturated_softmax(which):
    model = saturated_attention()
    g = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(0, 10, (16, 8), generator=g), torch.randint(0, 10, (16, 8), generator=g)
    nodes = [Component(f"blocks.0.attn.heads.{h}.{which}") for h in range(2)]
    exact = exact_effects(model, nodes, clean, corrupt, metric)
    star = atp_star_effects(model, nodes, clean, corrupt, metric, grad_drop=False)
    atp = atp_effects(model, nodes, clean, corrupt, metric)
    assert torch.allclose(star.effects, exact.effects, atol=1e-4)
    assert exact.effects.abs().max() > 0.1  # the patch matters ...
    assert (atp.effects - exact.effects).abs().max() > 0.3 * exact.effects.abs().max()  # ... and AtP misses it
    assert star.signed and (star.forwards, star.backwards) == (3, 1)


class TwoLinearLayers(nn.Module):
    """x → r1 = x W1 → h = x + r1 → r2 = h W2 → out = (h + r2) U: every path is linear, so the effect of
    patching x with layer ℓ held at its clean value is exactly AtP with layer ℓ's gradient dropped."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W1, self.W2, self.U = (nn.Parameter(torch.randn(4, 4, generator=g)) for _ in range(3))
        self.x, self.w1, self.w2 = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x):
        x = self.x(x)
        h = x + self.w1(x @ self.W1)
        return (h + self.w2(h @ self.W2)) @ self.U


def test_graddrop_is_the_mean_absolute_effect_with_one_layer_frozen():
    model = TwoLinearLayers()
    g = torch.Generator().manual_seed(4)
    clean, corrupt = torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 4, generator=g)
    m = lambda out: out[:, -1, 0].mean()  # noqa: E731
    nodes = [Component("x"), Component("w1")]
    star = atp_star_effects(model, nodes, clean, corrupt, m, layers=[["w1"], ["w2"]])
    with torch.no_grad(), capture(model, ["x", "w1", "w2"]) as c_acts:
        base = m(model(clean))
    c_acts = dict(c_acts)
    with torch.no_grad(), capture(model, ["x", "w1"]) as k_acts:
        model(corrupt)
    k_acts = dict(k_acts)
    want = []
    for node in nodes:
        total = 0.0
        for frozen in ("w1", "w2"):
            if frozen == node.site:
                continue  # freezing the node's own layer removes every path: effect 0
            with (
                torch.no_grad(),
                patch(model, node.site, "replace", k_acts[node.site]),
                patch(model, frozen, "replace", c_acts[frozen]),
            ):
                total += abs(float(m(model(clean)) - base))
        want.append(total)
    assert torch.allclose(star.effects, torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert not star.signed and (star.forwards, star.backwards) == (5, 3)
    exact = exact_effects(model, nodes, clean, corrupt, m)
    ag = agreement(star, exact, top=0.5)  # scored on |exact|
    assert ag["n_top"] == 1


def test_graddrop_needs_two_layers():
    model = saturated_attention()
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(UsageError, match="at least 2"):
        atp_star_effects(model, [Component("blocks.0.attn.heads.0.q")], x, x + 1, metric)
