"""Latent nodes through a spliced SAE: the splice leaves the output unchanged; with a linear readout after the
site, AtP is exact for every latent and for the error term, and the effects of all latents plus the error sum to
the effect of patching the whole site."""

from __future__ import annotations

import pytest
import torch
from test_circuits_patching import Component, Heads, metric
from torch import nn

from mechscope.circuits import atp_effects, exact_effects
from mechscope.circuits.latents import latent_nodes, spliced
from mechscope.errors import UsageError


class TinySAE:
    """ReLU encoder, linear decoder, 6 latents for a 3-wide site (so the error term is not zero)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.W_enc, self.W_dec, self.b = (
            torch.randn(3, 6, generator=g),
            torch.randn(6, 3, generator=g) / 3,
            torch.randn(3, generator=g),
        )

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, c):
        return c @ self.W_dec + self.b


def test_latent_and_error_effects_are_exact_and_add_up_to_the_site():
    model = Heads()
    g = torch.Generator().manual_seed(8)
    clean, corrupt = torch.randn(8, 5, 4, generator=g), torch.randn(8, 5, 4, generator=g)
    with torch.no_grad():
        before = model(clean)
    whole = exact_effects(model, [Component("h2")], clean, corrupt, metric)
    with spliced(model, "h2", TinySAE(), "sae") as sp:
        with torch.no_grad():
            assert torch.allclose(model(clean), before, atol=1e-5)  # the splice changes nothing
        nodes = latent_nodes("sae", range(6))
        exact = exact_effects(model, nodes, clean, corrupt, metric)
        atp = atp_effects(model, nodes, clean, corrupt, metric)
        assert isinstance(sp, nn.Module)
    assert not hasattr(model, "sae")  # removed on exit
    assert torch.allclose(atp.effects, exact.effects, atol=1e-4)  # linear after the codes: AtP is exact
    assert float(exact.effects.sum()) == pytest.approx(float(whole.effects[0]), abs=1e-4)
    assert exact.effects[:6].abs().max() > 1e-3 and exact.effects[6].abs() > 1e-3


def test_a_name_in_use_is_refused():
    model = Heads()
    with pytest.raises(UsageError, match="already has a module 'both'"):
        with spliced(model, "h2", TinySAE(), "both"):
            pass
