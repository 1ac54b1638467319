"""Saved SAEs: round trips in both layouts, tolerant configs, refusal of anything but safetensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mechscope.sae import REGISTRY, SAEFormatError, load_sae, save_sae
from tests.harness import perturbed_sae

D, N = 10, 24


def trained_like(arch: str):
    return perturbed_sae(arch, D, N, k=4, seed=1, scale=0.3)


@pytest.mark.parametrize("layout", ["mechscope", "saelens"])
@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_round_trip_encodes_identically(arch, layout, tmp_path):
    sae = trained_like(arch)
    if layout == "saelens" and arch in ("crosscoder", "clt", "jumprelu_clt"):
        with pytest.raises(SAEFormatError, match="no crosscoder|no cross-layer transcoder"):  # SAELens has none
            save_sae(sae, tmp_path / "cc", layout=layout)
        return
    if layout == "saelens" and arch in ("transcoder", "skip_transcoder"):
        with pytest.raises(SAEFormatError, match="no TopK"):  # SAELens transcoders are ReLU: TopK is refused
            save_sae(sae, tmp_path / "topk", layout=layout)
        sae = perturbed_sae(arch, D, N, k=N, seed=1, scale=0.3)  # k = latents is a ReLU transcoder, which SAELens has
    save_sae(sae, tmp_path / "sae", metadata={"site": "x"}, layout=layout)
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(50, D)
    codes = sae.encode(x)
    assert float((codes != 0).float().mean()) > 0.05  # the comparison is not between zeros
    assert torch.allclose(loaded.encode(x), codes, atol=1e-6)
    assert torch.allclose(loaded.decode(codes), sae.decode(codes), atol=1e-6)
    if layout == "mechscope":
        assert type(loaded) is type(sae) and loaded.cfg == sae.cfg


def test_unknown_config_fields_are_ignored(tmp_path):
    save_sae(trained_like("topk"), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["field_from_the_future"] = {"a": 1}
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path / "s").cfg.k == 4


def test_refuses_pickles_and_files_that_are_not_safetensors(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": N}))
    torch.save({"W_enc": torch.zeros(D, N)}, folder / "sae_weights.pt")
    with pytest.raises(SAEFormatError, match="safetensors"):
        load_sae(folder)
    with pytest.raises(SAEFormatError, match="refusing"):
        load_sae(folder / "sae_weights.pt")
    # A pickle under a safetensors name is refused too, and nothing in it runs.
    (folder / "sae_weights.safetensors").write_bytes((folder / "sae_weights.pt").read_bytes())
    with pytest.raises(SAEFormatError, match="not a safetensors file"):
        load_sae(folder)
    with pytest.raises(SAEFormatError, match="no cfg.json"):
        load_sae(tmp_path)


def _saelens_folder(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    return path


def test_saelens_without_b_dec_on_the_input_and_with_decoder_norm_rescaling(tmp_path):
    g = torch.Generator().manual_seed(3)
    W_enc, b_enc = torch.randn(D, N, generator=g), torch.randn(N, generator=g)
    W_dec, b_dec = torch.randn(N, D, generator=g), torch.randn(D, generator=g)
    x = torch.randn(30, D, generator=g)
    base = {"d_in": D, "d_sae": N, "normalize_activations": "none", "metadata": {"sae_lens_version": "6.1.0"}}
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}

    relu = load_sae(
        _saelens_folder(tmp_path / "relu", {**base, "architecture": "standard", "apply_b_dec_to_input": False}, tensors)
    )
    assert torch.allclose(relu.encode(x), torch.relu(x @ W_enc + b_enc), atol=1e-5)

    norms = W_dec.norm(dim=1)
    topk = load_sae(
        _saelens_folder(
            tmp_path / "topk",
            {
                **base,
                "architecture": "topk",
                "k": 5,
                "apply_b_dec_to_input": True,
                "rescale_acts_by_decoder_norm": True,
            },
            tensors,
        )
    )
    pre = ((x - b_dec) @ W_enc + b_enc) * norms
    v, i = pre.topk(5, dim=1)
    want = torch.zeros_like(pre).scatter(1, i, v.relu())
    assert torch.allclose(topk.encode(x), want, atol=1e-5)
    assert torch.allclose(topk.decode(want), (want / norms) @ W_dec + b_dec, atol=1e-4)


def test_pre_6_saelens_topk_config_and_unsupported_normalisation(tmp_path):
    tensors = {"W_enc": torch.randn(D, N), "b_enc": torch.zeros(N), "W_dec": torch.randn(N, D), "b_dec": torch.zeros(D)}
    old = {
        "d_in": D,
        "d_sae": N,
        "architecture": "standard",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
    }
    sae = load_sae(_saelens_folder(tmp_path / "old", old, tensors))
    assert sae.arch == "topk" and sae.cfg.k == 3
    ln = {"d_in": D, "d_sae": N, "architecture": "standard", "normalize_activations": "layer_norm"}
    with pytest.raises(SAEFormatError, match="normalize_activations"):
        load_sae(_saelens_folder(tmp_path / "ln", ln, tensors))
