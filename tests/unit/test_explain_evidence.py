"""Known answer for the evidence: a planted dictionary whose latent t fires exactly on token id t, with an
activation that varies from row to row, over a store built by hand. Its evidence must show that token in every
top and quantile window at the right activation, never in a negative, and quantile samples across the range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.explain.evidence import EvidenceConfig, EvidenceSource, quantile_bounds, row_keys
from tests.helpers_explain import FIRST, RPC, name, planted_sae, planted_store

PLANTED = 7


CFG = EvidenceConfig(top=6, quantiles=4, per_quantile=3, negatives=8, before=3, after=2, batch_size=64)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    store, tokens, acts = planted_store(tmp_path_factory.mktemp("planted"))
    return EvidenceSource(planted_sae(), store, "resid_post.0", name, CFG), tokens, acts


def _check_window(ex) -> None:
    """The window's activation is the planted one at every token: the row's scale at <7>, 0 elsewhere."""
    for t, a in zip(ex.tokens, ex.acts):
        assert (a > 0) == (t == name(PLANTED)), (t, a)


def test_top_windows_hold_the_planted_token_at_its_largest_activations(planted):
    source, tokens, acts = planted
    ev = source.evidence([PLANTED])[0]
    assert ev.latent == PLANTED and len(ev.top) == CFG.top
    firing = acts[:, PLANTED]
    best = firing.topk(1).values.item()
    assert ev.top[0].max_act == pytest.approx(best)
    maxes = [ex.max_act for ex in ev.top]
    assert maxes == sorted(maxes, reverse=True)
    for ex in ev.top:
        assert name(PLANTED) in ex.tokens
        _check_window(ex)
        assert len(ex.tokens) <= CFG.before + CFG.after + 1
    # the largest activation shown is the largest there is, and only scales that occur are shown
    occurring = set(firing[firing > 0].tolist())
    assert all(a in occurring for ex in ev.top for a in ex.acts if a > 0)


def test_negatives_never_hold_the_token_and_quantiles_span_the_range(planted):
    source, _, acts = planted
    ev = source.evidence([PLANTED])[0]
    assert len(ev.negatives) == CFG.negatives
    for ex in ev.negatives:
        assert name(PLANTED) not in ex.tokens and not any(ex.acts)
    assert len(ev.quantiles) == CFG.quantiles * CFG.per_quantile
    for ex in ev.quantiles:
        assert name(PLANTED) in ex.tokens
        _check_window(ex)
    firing = acts[:, PLANTED][acts[:, PLANTED] > 0]
    lo, hi = firing.quantile(0.25).item(), firing.quantile(0.75).item()
    # the sampled row's own activation: the weakest bin's samples lie in the bottom quarter, the strongest's in the
    # top quarter (each window's smallest firing value bounds its sampled row from above for the weakest bin)
    weakest = [min(a for a in ex.acts if a > 0) for ex in ev.quantiles[: CFG.per_quantile]]
    strongest = [ex.max_act for ex in ev.quantiles[-CFG.per_quantile :]]
    assert max(weakest) <= lo and min(strongest) >= hi


def test_quantile_bounds_split_the_firing_rows_into_equal_counts(planted):
    source, _, acts = planted
    bounds = quantile_bounds(source.scan, [PLANTED], 4)[0]
    firing = acts[:, PLANTED][acts[:, PLANTED] > 0]
    counts = torch.bincount((firing[:, None] >= bounds[None]).sum(1), minlength=4)
    assert counts.sum() == firing.numel()
    # one log bin (±6%) of slack on scales spaced 0.25 apart: each bin within a few rows' scale-step of a quarter
    assert (counts.float() / firing.numel() - 0.25).abs().max() < 0.12, counts


def test_evidence_is_the_same_whatever_the_batch_of_latents(planted):
    source, _, _ = planted
    alone = source.evidence([PLANTED])[0]
    with_others = source.evidence([3, PLANTED, 11])[1]
    assert alone == with_others
    assert source.evidence([PLANTED], source.quantile_rows([2, PLANTED]))[0] == alone


def test_row_keys_are_uniform_and_depend_on_latent_row_and_seed():
    r, l = torch.arange(20_000), torch.tensor([0, 1])
    k = row_keys(r, l, 0)
    assert k.shape == (20_000, 2) and 0 <= k.min() and k.max() < 1
    assert abs(k.mean().item() - 0.5) < 0.01 and (k[:, 0] != k[:, 1]).float().mean() > 0.99
    assert not torch.equal(row_keys(r, l, 1), k)
    assert torch.equal(row_keys(r[5:9], l, 0), k[5:9])


def test_a_store_without_held_out_rows_is_refused(tmp_path):
    from mechscope.errors import UsageError

    store, _, _ = planted_store(tmp_path)
    store.manifest["shards"][0]["split"] = "train"
    with pytest.raises(UsageError, match="val_tokens"):
        EvidenceSource(planted_sae(), store, "resid_post.0", name, CFG)


def test_gather_of_window_rows_matches_the_store(planted):
    source, tokens, acts = planted
    got = source._context_acts({2}, [PLANTED])[2][:, 0]
    assert torch.equal(got, acts[2 * RPC : 3 * RPC, PLANTED])
    assert np.array_equal(tokens[2, FIRST:].numpy() == PLANTED, (got > 0).numpy())


def test_a_transcoder_is_read_at_its_input_site(planted):
    """A TopK transcoder with k = latents and the planted encoder codes like the planted ReLU SAE: the same
    evidence (its encoder reads the input rows; its decoder width plays no part)."""
    from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE

    source, _, _ = planted
    tc = TranscoderSAE(TranscoderConfig(d_in=16, d_out=5, latents=16, k=16))
    with torch.no_grad():
        tc.W_enc.copy_(torch.eye(16))
        tc.b_enc.zero_()
    via_tc = EvidenceSource(tc.eval(), source.store, "resid_post.0", name, CFG)
    assert via_tc.evidence([PLANTED]) == source.evidence([PLANTED])
