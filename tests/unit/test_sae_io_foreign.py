"""SAELens-layout files mechscope cannot reproduce exactly are refused, naming the cause; the ones it
can are read with their meaning intact (issue 8, items 7-10)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import safe_open, save_file

from mechscope.digest import DIGEST_KEY, tensors_digest
from mechscope.errors import MechscopeError, UsageError
from mechscope.sae import SAEFormatError, load_sae, save_sae
from mechscope.sae.saelens_names import hook_name
from tests.harness import perturbed_sae

D, N = 10, 24


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D, N, generator=g),
        "b_enc": 0.1 * torch.randn(N, generator=g),
        "W_dec": torch.randn(N, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }


def _folder(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N, **cfg}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    return path


def test_expected_average_normalisation_needs_the_scaling_factor_and_folds_it(tmp_path):
    t = _tensors()
    folder = _folder(
        tmp_path / "norm", {"architecture": "standard", "normalize_activations": "expected_average_only_in"}, t
    )
    with pytest.raises(SAEFormatError, match="expected_average_only_in.*scaling factor.*pass it as `scaling_factor`"):
        load_sae(folder)
    s = 0.37
    sae = load_sae(folder, scaling_factor=s)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    # SAELens trained it on s·x: codes = ReLU((s·x − b_dec) W_enc + b_enc), reconstruction of s·x = codes W_dec + b_dec.
    want = torch.relu((s * x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert float((want != 0).float().mean()) > 0.1
    assert torch.allclose(sae.encode(x), want, atol=1e-5)
    assert torch.allclose(sae.decode(want), (want @ t["W_dec"] + t["b_dec"]) / s, atol=1e-4)  # in raw units
    # A factor where none is needed would rescale silently: refused.
    plain = _folder(tmp_path / "plain", {"architecture": "standard", "normalize_activations": "none"}, t)
    with pytest.raises(UsageError, match=r"drop the scaling factor \(`scaling_factor`\)"):
        load_sae(plain, scaling_factor=s)
    with pytest.raises(UsageError, match=r"drop the scaling factor \(`scaling_factor`\)"):
        load_sae(save_sae(perturbed_sae("relu", D, N), tmp_path / "own"), scaling_factor=s)
    with pytest.raises(UsageError, match="positive"):
        load_sae(folder, scaling_factor=-1.0)


@pytest.mark.parametrize("field", ["activation_fn_str", "activation_fn"])
def test_unknown_activation_functions_are_refused_by_name(field, tmp_path):
    folder = _folder(tmp_path / "tanh", {"architecture": "standard", field: "tanh-relu"}, _tensors())
    with pytest.raises(SAEFormatError, match="activation function 'tanh-relu' is not supported"):
        load_sae(folder)
    relu = load_sae(_folder(tmp_path / "relu", {"architecture": "standard", field: "relu"}, _tensors()))
    assert relu.arch == "relu"


@pytest.mark.parametrize(
    ("arch", "extra", "names"),
    [
        ("standard", {"threshold": torch.ones(N)}, r"unexpected \['threshold'\]"),
        ("standard", {"W_skip": torch.eye(D)}, r"unexpected \['W_skip'\]"),
        ("jumprelu", {}, r"missing \['threshold'\]"),
    ],
)
def test_unexpected_or_missing_tensors_are_refused_by_name(arch, extra, names, tmp_path):
    folder = _folder(tmp_path / "s", {"architecture": arch}, {**_tensors(), **extra})
    with pytest.raises(SAEFormatError, match=names):
        load_sae(folder)


def test_own_layout_refuses_stray_and_misshapen_tensors(tmp_path):
    folder = save_sae(perturbed_sae("topk", D, N), tmp_path / "own")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.pop("tensors_sha256")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with safe_open(str(folder / "sae.safetensors"), framework="pt") as f:
        header = f.metadata()

    def rewrite(tensors):  # as a buggy writer would: digests that match the wrong tensors
        save_file(tensors, str(folder / "sae.safetensors"), metadata={**header, DIGEST_KEY: tensors_digest(tensors)})

    rewrite({**_tensors(), "W_skip": torch.eye(D)})
    with pytest.raises(SAEFormatError, match=r"unexpected \['W_skip'\]"):
        load_sae(folder)
    rewrite({**_tensors(), "W_dec": torch.zeros(N, D + 1)})
    with pytest.raises(SAEFormatError, match=r"W_dec \(24, 11\) \(expected \(24, 10\)\)"):
        load_sae(folder)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"hook_head_index": 3}, "hook_head_index=3"),
        ({"metadata": {"hook_head_index": 0}}, "hook_head_index=0"),
        ({"hook_point_head_index": 1}, "hook_head_index=1"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
        ({"hook_point": "blocks.2.attn.hook_z"}, "reshape_activations='hook_z'"),
        ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm is read for 'topk' SAEs only"),
    ],
)
def test_head_index_reshaped_activations_and_unread_rescaling_are_refused(cfg, match, tmp_path):
    with pytest.raises(SAEFormatError, match=match):
        load_sae(_folder(tmp_path / "s", {"architecture": "standard", **cfg}, _tensors()))


def test_every_refusal_is_a_one_line_mechscope_error(tmp_path):
    folder = _folder(tmp_path / "s", {"architecture": "standard", "activation_fn_str": "tanh-relu"}, _tensors())
    with pytest.raises(MechscopeError) as err:
        load_sae(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


@pytest.mark.parametrize(
    ("site", "hook"),
    [
        ("resid_post.6", "blocks.6.hook_resid_post"),
        ("model.layers.6", "blocks.6.hook_resid_post"),
        ("model.layers.6:output", "blocks.6.hook_resid_post"),
        ("transformer.h.2:input", "blocks.2.hook_resid_pre"),
        ("model.layers.11.mlp:output", None),  # Llama's mlp_out, but Gemma 2's MLP output comes before a post-norm
        ("model.layers.3.self_attn:output.0", None),  # likewise attention: hook_name(site, "llama") names it
        ("mlp_in.4", "blocks.4.ln2.hook_normalized"),
        ("model.layers.6.mlp.act_fn:output", None),
        (None, None),
    ],
)
def test_site_to_transformerlens_hook(site, hook):
    assert hook_name(site) == hook


def test_saelens_export_records_hook_model_and_an_honest_version(tmp_path, monkeypatch):
    from importlib import metadata

    def version(name, real=metadata.version):
        if name == "sae-lens":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"model_id": "SmolLM2-135M-Instruct"}))
    folder = save_sae(
        perturbed_sae("topk", D, N),
        tmp_path / "x",
        layout="saelens",
        metadata={"site": "model.layers.6", "store": str(store)},
    )
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == "blocks.6.hook_resid_post"
    assert meta["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Without sae-lens installed, the verified release is written, with a note saying so.
    assert meta["sae_lens_version"] == "6.54.12" and "was not installed" in meta["sae_lens_version_note"]
    unknown = json.loads(
        (
            save_sae(
                perturbed_sae("relu", D, N), tmp_path / "y", layout="saelens", metadata={"site": "encoder.mixer:output"}
            )
            / "cfg.json"
        ).read_text()
    )["metadata"]
    assert unknown["hook_name"] is None and unknown["model_name"] is None


@pytest.mark.slow  # the real command line in a subprocess
def test_cli_names_a_corrupt_sae_in_one_line(tmp_path):
    """The real ``mechscope evaluate`` on an SAE with one flipped exponent bit: one line naming the file,
    before any store or model is read. (The other refusals are the same MechscopeError class.)"""
    from tests.harness import assert_one_line_error

    saved = save_sae(perturbed_sae("relu", D, N), tmp_path / "own")
    weights = saved / "sae.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x40  # the exponent of the last float of the last tensor
    weights.write_bytes(bytes(raw))
    assert_one_line_error(
        ["evaluate", "--store", str(tmp_path / "no-store"), "--site", "resid_post.1", "--sae", str(saved)],
        rf"{weights}: tensor digest mismatch",
    )


@pytest.mark.parametrize(("installed", "written", "note"), [("6.60.1", "6.60.1", False), ("5.9.0", "6.54.12", True)])
def test_saelens_export_writes_the_installed_version_only_when_it_reads_the_layout(
    installed, written, note, tmp_path, monkeypatch
):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: installed if name == "sae-lens" else real(name))
    meta = json.loads(
        (save_sae(perturbed_sae("relu", D, N), tmp_path / "x", layout="saelens") / "cfg.json").read_text()
    )["metadata"]
    assert meta["sae_lens_version"] == written
    assert ("sae_lens_version_note" in meta) == note
