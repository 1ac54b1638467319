"""Foreign dictionary formats made by hand (issue 26): sparsify folders and Gemma Scope params.npz load with
the formulas their packages use, the format is detected and named, every unknown field, activation, tensor and
shape is refused by name in one line, and ``mechscope convert`` writes through the format registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mechscope.cli import main
from mechscope.errors import MechscopeError, UsageError
from mechscope.sae import SAEFormatError, load_sae, save_sae
from mechscope.sae.formats import FORMATS, convert, detect_format
from tests.harness import perturbed_sae

D, N, K = 8, 20, 4
X = torch.randn(32, D, generator=torch.Generator().manual_seed(3))


def _sparsify(path, cfg=None, tensors=None, seed=0):
    """A sparsify folder as eai-sparsify 1.3.3 writes it (cfg.json + sae.safetensors, encoder as nn.Linear)."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "encoder.weight": torch.randn(N, D, generator=g),
        "encoder.bias": 0.1 * torch.randn(N, generator=g),
        "W_dec": torch.randn(N, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }
    if (cfg or {}).get("skip_connection"):
        t["W_skip"] = torch.randn(D, D, generator=g)
    path.mkdir()
    full = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": N,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
        **(cfg or {}),
    }
    (path / "cfg.json").write_text(json.dumps(full))
    save_file(tensors if tensors is not None else t, str(path / "sae.safetensors"))
    return path, t


def _sparsify_reference(cfg, t, x):
    """sparsify's encode/decode written out: ReLU pre-activations, the k largest kept."""
    pre = torch.relu((x if cfg.get("transcode") else x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(K, dim=1)
    codes = torch.zeros_like(pre).scatter_(1, idx, vals)
    out = codes @ t["W_dec"] + t["b_dec"]
    if cfg.get("skip_connection"):
        out = out + x @ t["W_skip"].T
    return codes, out


@pytest.mark.parametrize(
    "cfg, arch",
    [
        ({}, "topk"),
        ({"transcode": True}, "transcoder"),
        ({"transcode": True, "skip_connection": True}, "skip_transcoder"),
    ],
)
def test_sparsify_folders_load_with_sparsifys_codes_and_outputs(cfg, arch, tmp_path):
    folder, t = _sparsify(tmp_path / "s", cfg)
    sae = load_sae(folder)
    assert (sae.arch, sae.file_format) == (arch, "sparsify")
    codes, out = _sparsify_reference(cfg, t, X)
    assert float((codes != 0).float().sum(1).min()) == K
    torch.testing.assert_close(sae.encode(X), codes, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.predict(X), out, atol=1e-4, rtol=0)


def test_sparsify_expansion_factor_sets_the_width_when_num_latents_is_zero(tmp_path):
    folder, _ = _sparsify(tmp_path / "s", {"num_latents": 0, "expansion_factor": 1})
    with pytest.raises(SAEFormatError, match=r"wrong shape"):  # d·expansion_factor ≠ the tensors' N: named
        load_sae(folder)
    ok, _ = _sparsify(
        tmp_path / "ok",
        {"num_latents": 0, "expansion_factor": 1},
        tensors={
            "encoder.weight": torch.randn(D, D),
            "encoder.bias": torch.zeros(D),
            "W_dec": torch.randn(D, D),
            "b_dec": torch.zeros(D),
        },
    )
    assert load_sae(ok).latents == D


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"activation": "groupmax"}, r"activation='groupmax' is not supported"),
        ({"skip_connection": True}, r"skip_connection=true with transcode=false"),
        ({"normalise_inputs": True}, r"field\(s\) normalise_inputs not known"),
        ({"k": "4"}, r"k='4' is not an integer"),
        ({"transcode": "false"}, r"transcode='false' are not true/false"),
        ({"k": N + 1}, r"config does not fit a topk SAE \(k must be in 1..latents"),
    ],
)
def test_sparsify_refusals_name_the_field(cfg, match, tmp_path):
    folder, _ = _sparsify(tmp_path / "s", cfg)
    with pytest.raises(SAEFormatError, match=match) as err:
        load_sae(folder)
    assert "\n" not in str(err.value)


def test_sparsify_stray_and_misshapen_tensors_are_refused_by_name(tmp_path):
    _, t = _sparsify(tmp_path / "ref")
    stray, _ = _sparsify(tmp_path / "stray", tensors={**t, "threshold": torch.zeros(N)})
    with pytest.raises(SAEFormatError, match=r"unexpected \['threshold'\]"):
        load_sae(stray)
    bad, _ = _sparsify(tmp_path / "bad", tensors={**t, "b_dec": torch.zeros(D + 1)})
    with pytest.raises(SAEFormatError, match=r"b_dec \(9,\) \(expected \(8,\)\)"):
        load_sae(bad)


@pytest.mark.parametrize("arch", ["topk", "transcoder", "skip_transcoder"])
def test_sparsify_written_by_mechscope_reads_back_identically_and_is_verified(arch, tmp_path):
    sae = perturbed_sae(arch, D, N, k=K)
    folder = FORMATS["sparsify"].save(sae, tmp_path / "out", {})
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["transcode"], cfg["skip_connection"], cfg["k"], cfg["num_latents"]) == (
        arch != "topk",
        arch == "skip_transcoder",
        K,
        N,
    )
    back = load_sae(folder)
    assert back.arch == arch and back.file_format == "sparsify"
    torch.testing.assert_close(back.encode(X), sae.encode(X))
    torch.testing.assert_close(back.predict(X), sae.predict(X))
    weights = folder / "sae.safetensors"  # our digest is in the header: a changed byte is refused
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x40
    weights.write_bytes(bytes(raw))
    with pytest.raises(SAEFormatError, match="tensor digest mismatch"):
        load_sae(folder)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "relu", "matryoshka"])
def test_sparsify_cannot_hold_thresholds_or_relu_codes_so_writing_them_is_refused(arch, tmp_path):
    with pytest.raises(SAEFormatError, match=rf"a '{arch}' SAE would lose what sets its codes"):
        FORMATS["sparsify"].save(perturbed_sae(arch, D, N, k=K), tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def _gemmascope(path, arrays=None, seed=0):
    g = np.random.default_rng(seed)
    a = {
        "W_enc": g.standard_normal((D, N)),
        "W_dec": g.standard_normal((N, D)),
        "b_enc": 0.1 * g.standard_normal(N),
        "b_dec": g.standard_normal(D),
        "threshold": 0.5 * g.random(N),
    }
    a = {k: v.astype(np.float32) for k, v in a.items()}
    path.mkdir()
    np.savez(path / "params.npz", **(arrays if arrays is not None else a))
    return path, a


def test_gemmascope_params_load_as_jumprelu_with_gemma_scopes_codes(tmp_path):
    folder, a = _gemmascope(tmp_path / "g")
    x = X.numpy()
    pre = x @ a["W_enc"] + a["b_enc"]  # Gemma Scope reads x itself, no b_dec on the input
    codes = np.maximum(pre, 0) * (pre > a["threshold"])
    assert 0 < (codes != 0).mean() < 0.9
    for where in (folder, folder / "params.npz"):
        sae = load_sae(where)
        assert (sae.arch, sae.file_format) == ("jumprelu", "gemmascope")
        with torch.no_grad():
            np.testing.assert_allclose(sae.encode(X).numpy(), codes, atol=1e-5)
            np.testing.assert_allclose(
                sae.decode(torch.from_numpy(codes)).numpy(), codes @ a["W_dec"] + a["b_dec"], atol=1e-4
            )


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "log_threshold": a["threshold"]}, r"unexpected \['log_threshold'\], missing none"),
        (lambda a: {k: v for k, v in a.items() if k != "threshold"}, r"missing \['threshold'\]"),
        (lambda a: {**a, "b_dec": a["b_dec"][:-1]}, r"b_dec \(7,\) \(expected \(8,\)\)"),
        (lambda a: {**a, "threshold": (a["threshold"] > 0.2)}, r"threshold are not floating point \(bool\)"),
        (lambda a: {**a, "W_enc": a["W_enc"][0]}, r"W_enc has shape \(20,\), expected \[d, n\]"),
    ],
)
def test_gemmascope_refusals_name_the_array(change, match, tmp_path):
    _, a = _gemmascope(tmp_path / "ref")
    folder, _ = _gemmascope(tmp_path / "g", change(a))
    with pytest.raises(SAEFormatError, match=match):
        load_sae(folder)


def test_gemmascope_object_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    _, a = _gemmascope(tmp_path / "ref")
    folder = tmp_path / "g"
    folder.mkdir()
    np.savez(folder / "params.npz", **a, W_skip=np.array([_Boom(str(marker))], dtype=object))
    with pytest.raises(SAEFormatError, match="not a numpy .npz of plain arrays"):
        load_sae(folder)
    assert not marker.exists()


class _Boom:
    """Unpickling this would write a file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_detection_names_every_format_when_none_matches_and_refuses_scaling_factors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SAEFormatError, match=r"no cfg.json.*sparsify: cfg.json \+ sae.safetensors.*gemmascope: params.npz"
    ):
        load_sae(tmp_path / "empty")
    folder, _ = _sparsify(tmp_path / "s")
    assert detect_format(folder).name == "sparsify"
    with pytest.raises(UsageError, match=r"a sparsify dictionary reads raw activations; drop the scaling factor"):
        load_sae(folder, scaling_factor=2.0)
    own = save_sae(perturbed_sae("topk", D, N, k=K), tmp_path / "own")
    assert detect_format(own).name == "mechscope" and load_sae(own).file_format == "mechscope"


@pytest.mark.parametrize("to", ["mechscope", "saelens", "sparsify"])
def test_convert_from_gemmascope_and_sparsify_keeps_codes(to, tmp_path):
    src, _ = _sparsify(tmp_path / "s", {"transcode": True})
    if to == "saelens":  # SAELens holds a TopK transcoder? it holds 'transcoder' (ReLU); mechscope refuses k < n there
        src = save_sae(perturbed_sae("topk", D, N, k=K), tmp_path / "topk")
    source, out = convert(src, tmp_path / "out", to)
    before, after = load_sae(src), load_sae(out)
    assert after.file_format == to and source == before.file_format
    torch.testing.assert_close(after.predict(X), before.predict(X))
    g, _ = _gemmascope(tmp_path / "g")
    if to != "sparsify":
        convert(g, tmp_path / "gout", to)
        torch.testing.assert_close(load_sae(tmp_path / "gout").encode(X), load_sae(g).encode(X))
    else:
        with pytest.raises(SAEFormatError, match="'jumprelu' SAE would lose"):
            convert(g, tmp_path / "gout", to)


def test_convert_refuses_read_only_formats_and_the_cli_answers_in_json(tmp_path, capsys):
    src, _ = _sparsify(tmp_path / "s")
    with pytest.raises(
        UsageError,
        match=r"`to`='gemmascope' is not a format mechscope writes; choose one of mechscope, saelens, sparsify",
    ):
        convert(src, tmp_path / "o", "gemmascope")
    assert main(["convert", str(src), str(tmp_path / "out"), "--to", "mechscope", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["source_format"], out["format"]) == ("sparsify", "mechscope")
    assert load_sae(out["dst"]).arch == "topk"
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "o2"), "--to", "sparsify"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such SAE folder" in err
    with pytest.raises(SAEFormatError, match=r"already holds a mechscope dictionary; writing a sparsify one beside it"):
        convert(src, tmp_path / "out", "sparsify")
    assert (
        main(["convert", str(tmp_path / "out"), str(tmp_path / "o3"), "--to", "sparsify", "--sae-scaling-factor", "2"])
        == 2
    )
    assert "drop the scaling factor (--sae-scaling-factor)" in capsys.readouterr().err


def test_every_refusal_is_one_mechscope_error(tmp_path):
    folder, _ = _sparsify(tmp_path / "s", {"activation": "groupmax"})
    with pytest.raises(MechscopeError):
        load_sae(folder)


def _dictlearn(path, dict_class, state, trainer=None, buffer=None):
    """A dictionary_learning run folder as its trainSAE writes it: ae.pt (torch.save of the state_dict) + config.json."""
    path.mkdir()
    torch.save(state, path / "ae.pt")
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "trainer_class": "T",
            "activation_dim": D,
            "dict_size": N,
            **(trainer or {}),
        }
    }
    if buffer is not None:
        cfg["buffer"] = buffer
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def _batchtopk_state(threshold=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(threshold),
        "encoder.weight": torch.randn(N, D, generator=g),
        "encoder.bias": 0.1 * torch.randn(N, generator=g),
        "decoder.weight": torch.randn(D, N, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }


def test_dictlearn_batchtopk_runs_at_its_threshold_never_as_topk(tmp_path):
    s = _batchtopk_state()
    sae = load_sae(_dictlearn(tmp_path / "b", "BatchTopKSAE", s, {"k": K}))
    assert (sae.arch, sae.file_format, float(sae.threshold)) == ("batchtopk", "dictlearn", pytest.approx(0.8))
    z = torch.relu((X - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    want = z * (z > 0.8)  # the package's default encode (use_threshold=True)
    as_topk = torch.zeros_like(z).scatter_(1, z.topk(K, dim=1).indices, z.topk(K, dim=1).values)
    assert not torch.equal(want, as_topk)  # the silent failure the threshold avoids
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(X), want)
        torch.testing.assert_close(sae.decode(want), want @ s["decoder.weight"].T + s["b_dec"])


@pytest.mark.parametrize(
    "dict_class, state, trainer, buffer, match",
    [
        (
            "BatchTopKSAE",
            _batchtopk_state(threshold=-1.0),
            {"k": K},
            None,
            r"threshold=-1.0: the inference threshold was never learned",
        ),
        ("IdentityDict", {}, {}, None, r"dict_class 'IdentityDict' is the identity map \(no dictionary to load\)"),
        (
            "CrossCoder",
            {"encoder.weight": torch.zeros(2, D, N)},
            {},
            None,
            r"dict_class 'CrossCoder' is a crosscoder from an unreleased",
        ),
        (
            "BatchTopKCrossCoder",
            {"encoder.weight": torch.zeros(2, D, N)},
            {},
            None,
            r"dict_class 'BatchTopKCrossCoder' is a BatchTopK crosscoder",
        ),
        (
            "MysteryAE",
            {},
            {},
            None,
            r"dict_class 'MysteryAE' is not supported; mechscope reads AutoEncoder, AutoEncoderNew",
        ),
        ("BatchTopKSAE", _batchtopk_state(), {"k": K + 1}, None, r"config k=5 but the state_dict's k is 4"),
        (
            "BatchTopKSAE",
            _batchtopk_state(),
            {"k": K, "temperature": 2.0},
            None,
            r"field\(s\) trainer.temperature not known",
        ),
        ("BatchTopKSAE", _batchtopk_state(), {"k": K}, {"io": "in_and_out"}, r"buffer io='in_and_out'"),
        (
            "BatchTopKSAE",
            {**_batchtopk_state(), "W_skip": torch.zeros(D, D)},
            {"k": K},
            None,
            r"unexpected \['W_skip'\]",
        ),
        (
            "AutoEncoderTopK",
            {k: v for k, v in _batchtopk_state().items() if k != "k"},
            {},
            None,
            r"AutoEncoderTopK without its 'k' buffer",
        ),
    ],
)
def test_dictlearn_refusals_name_the_cause(dict_class, state, trainer, buffer, match, tmp_path):
    folder = _dictlearn(tmp_path / "d", dict_class, state, trainer, buffer)
    with pytest.raises(SAEFormatError, match=match) as err:
        load_sae(folder)
    assert "\n" not in str(err.value)


def test_dictlearn_ae_pt_is_never_unpickled_and_needs_its_config(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "d"
    folder.mkdir()
    torch.save({"encoder.weight": _Boom(str(marker))}, folder / "ae.pt")
    with pytest.raises(SAEFormatError, match=r"ae.pt without config.json"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder"}}))
    with pytest.raises(SAEFormatError, match=r"not a plain state_dict of tensors \(refused without unpickling"):
        load_sae(folder)
    assert not marker.exists()
