"""circuit-tracer's dictionary files made by hand (issue 26): per-layer transcoders, cross-layer transcoders and
transcoder sets load with the formulas circuit-tracer uses, write back, and every unknown field, tensor and shape is
refused by name in one line; the other foreign formats are in test_sae_formats.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechscope.sae import SAEFormatError, load_sae, save_sae
from mechscope.sae.formats import FORMATS, convert
from tests.harness import perturbed_sae

D, N, K = 8, 20, 4
X = torch.randn(32, D, generator=torch.Generator().manual_seed(3))


def _circuittracer(file, threshold=True, skip=False, extra=None, seed=0):
    """A layer file as circuit-tracer's SingleLayerTranscoder.to_safetensors writes it (W_enc as nn.Linear: [n, d])."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(N, D, generator=g),
        "W_dec": torch.randn(N, D, generator=g),
        "b_enc": 0.1 * torch.randn(N, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }
    if threshold:
        t["activation_function.threshold"] = 0.6 * torch.rand(N, generator=g)
    if skip:
        t["W_skip"] = torch.randn(D, D, generator=g)
    t.update(extra or {})
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(file))
    return file, t


@pytest.mark.parametrize(
    "threshold, skip, arch",
    [
        (True, False, "jumprelu_transcoder"),
        (True, True, "jumprelu_skip_transcoder"),
        (False, False, "transcoder"),
        (False, True, "skip_transcoder"),
    ],
)
def test_circuittracer_layer_files_load_with_its_codes_and_write_back(threshold, skip, arch, tmp_path):
    file, t = _circuittracer(tmp_path / "layers" / "layer_3.safetensors", threshold, skip)
    sae = load_sae(file)
    assert (sae.arch, sae.file_format) == (arch, "circuittracer")
    z = X @ t["W_enc"].T + t["b_enc"]  # circuit-tracer: F.linear, the encoder reads x itself
    codes = z * (z > t["activation_function.threshold"]) if threshold else torch.relu(z)
    out = codes @ t["W_dec"] + t["b_dec"] + (X @ t["W_skip"].T if skip else 0)
    assert 0 < float((codes != 0).float().mean()) < 0.9
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(X), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.predict(X), out, atol=1e-4, rtol=1e-5)
    _, folder = convert(file, tmp_path / "back", "circuittracer")
    assert load_sae(folder).file_format == "circuittracer"
    written = load_file(str(folder / "transcoder.safetensors"))
    for name, value in t.items():  # the same tensors, in circuit-tracer's layout
        torch.testing.assert_close(written[name], value)


def test_circuittracer_refusals_name_the_cause(tmp_path):
    negative, _ = _circuittracer(
        tmp_path / "neg.safetensors", extra={"activation_function.threshold": torch.full((N,), -0.1)}
    )
    with pytest.raises(SAEFormatError, match=r"20 negative threshold\(s\).*z·1\[z > θ\], negative codes included"):
        load_sae(negative)
    stray, _ = _circuittracer(tmp_path / "stray.safetensors", extra={"log_thresholds": torch.zeros(N)})
    with pytest.raises(SAEFormatError, match=r"tensor\(s\) log_thresholds not known"):
        load_sae(stray)
    bad, _ = _circuittracer(tmp_path / "bad.safetensors", extra={"b_dec": torch.zeros(D + 1)})
    with pytest.raises(SAEFormatError, match=r"b_dec \(9,\) \(expected \(8,\)\)"):
        load_sae(bad)
    with pytest.raises(SAEFormatError, match=r"no field for k: this TopK transcoder \(k=4 < latents=20\)"):
        convert(save_sae(perturbed_sae("transcoder", D, N, k=K), tmp_path / "topk"), tmp_path / "o", "circuittracer")
    with pytest.raises(SAEFormatError, match=r"a 'topk' dictionary has no such file"):
        convert(save_sae(perturbed_sae("topk", D, N, k=K), tmp_path / "sae"), tmp_path / "o2", "circuittracer")


def test_convert_carries_a_mechscope_sources_metadata_so_saelens_names_its_hook(tmp_path):
    src = save_sae(perturbed_sae("topk", D, N, k=K), tmp_path / "own", metadata={"site": "resid_post.3", "note": "x"})
    convert(src, tmp_path / "sl", "saelens")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert (cfg["metadata"]["note"], cfg["metadata"]["source_format"]) == ("x", "mechscope")


CL, CM = 3, 5


def _clt_folder(path, threshold=True, config=None, drop=(), extra=None, seed=0):
    """A CLT folder as circuit-tracer's CrossLayerTranscoder.to_safetensors writes it, with its config.yaml."""
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    layers = []
    for i in range(CL):
        enc = {
            f"W_enc_{i}": torch.randn(CM, D, generator=g),
            f"b_enc_{i}": 0.1 * torch.randn(CM, generator=g),
            f"b_dec_{i}": torch.randn(D, generator=g),
        }
        if threshold:
            enc[f"threshold_{i}"] = 0.6 * torch.rand(CM, generator=g)
        dec = {f"W_dec_{i}": torch.randn(CM, CL - i, D, generator=g)}
        enc.update({k: v for k, v in (extra or {}).items() if k.endswith(f"_{i}")})
        layers.append((enc, dec))
        for name, t in ((f"W_enc_{i}", enc), (f"W_dec_{i}", dec)):
            if name not in drop:
                save_file(t, str(path / f"{name}.safetensors"))
    if config is not None:
        import yaml

        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path, layers


def _clt_reference(layers, x, threshold):
    """circuit-tracer's CLT maths written out on rows [B, L·d]: per-layer codes, outputs summed over source layers."""
    xs = x.reshape(x.shape[0], CL, D)
    codes = []
    for i, (enc, _) in enumerate(layers):
        z = xs[:, i] @ enc[f"W_enc_{i}"].T + enc[f"b_enc_{i}"]
        codes.append(z * (z > enc[f"threshold_{i}"]) if threshold else torch.relu(z))
    out = [
        layers[t][0][f"b_dec_{t}"] + sum(codes[i] @ layers[i][1][f"W_dec_{i}"][:, t - i] for i in range(t + 1))
        for t in range(CL)
    ]
    return torch.cat(codes, 1), torch.cat(out, 1)


@pytest.mark.parametrize("threshold, arch", [(True, "jumprelu_clt"), (False, "clt")])
def test_circuittracer_clt_folders_load_with_its_codes_and_write_back(threshold, arch, tmp_path):
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": "org/model",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
    }
    folder, layers = _clt_folder(tmp_path / "clt", threshold, config)
    sae = load_sae(folder)
    assert (sae.arch, sae.file_format, sae.cfg.layers) == (arch, "circuittracer-clt", CL)
    assert sae.metadata == {
        "model_name": "org/model",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "site": ["mlp_in.0", "mlp_in.1", "mlp_in.2"],
        "target_site": ["mlp_out.0", "mlp_out.1", "mlp_out.2"],
    }
    x = torch.randn(32, CL * D, generator=torch.Generator().manual_seed(4))
    codes, out = _clt_reference(layers, x, threshold)
    assert 0.05 < float((codes != 0).float().mean()) < 0.9
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.predict(x), out, atol=1e-4, rtol=1e-5)
    _, back = convert(folder, tmp_path / "back", "circuittracer-clt")  # the config's sites are carried back out
    import yaml

    assert yaml.safe_load((back / "config.yaml").read_text()) == config
    for i, (enc, dec) in enumerate(layers):  # the same tensors, in circuit-tracer's layout
        for file, tensors in ((f"W_enc_{i}", enc), (f"W_dec_{i}", dec)):
            written = load_file(str(back / f"{file}.safetensors"))
            assert set(written) == set(tensors)
            for name, value in tensors.items():
                torch.testing.assert_close(written[name], value)
    mine = convert(folder, tmp_path / "own", "mechscope")[1]  # and mechscope's layout keeps the sites for graphs
    assert json.loads((mine / "cfg.json").read_text())["metadata"]["target_site"] == [
        "mlp_out.0",
        "mlp_out.1",
        "mlp_out.2",
    ]


@pytest.mark.parametrize(
    "make, match",
    [
        (dict(extra={"threshold_1": torch.full((CM,), -0.1)}), r"5 negative threshold\(s\).*negative codes included"),
        (dict(drop=("W_dec_2",)), r"W_dec_2.safetensors missing"),
        (dict(drop=("W_enc_1", "W_dec_1")), r"W_enc_1, W_dec_1.safetensors missing"),
        (dict(extra={"W_skip_0": torch.zeros(D, D)}), r"layer 0 tensor\(s\) W_skip_0 not known"),
        (dict(extra={"b_dec_2": torch.zeros(D + 1)}), r"b_dec_2 has shape \(9,\), expected \(8,\)"),
        (
            dict(config={"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid"}),
            r"feature_input_hook='hook_resid_mid' reads a place no mechscope site reads",
        ),
        (
            dict(config={"model_kind": "cross_layer_transcoder", "feature_output_hook": "mlp.hook_out"}),
            r"feature_output_hook='mlp.hook_out'",
        ),
        (
            dict(config={"model_kind": "transcoder_set"}),
            r"model_kind='transcoder_set' beside these files; they are a cross_layer_transcoder",
        ),
        (
            dict(config={"model_kind": "cross_layer_transcoder", "activation": "topk"}),
            r"field\(s\) activation not known",
        ),
    ],
)
def test_circuittracer_clt_refusals_name_the_cause(make, match, tmp_path):
    folder, _ = _clt_folder(tmp_path / "c", **make)
    with pytest.raises(SAEFormatError, match=match) as err:
        load_sae(folder)
    assert "\n" not in str(err.value)


def test_circuittracer_clt_mixed_thresholds_and_unwritable_clts_are_refused(tmp_path):
    folder, _ = _clt_folder(tmp_path / "mixed")
    t = load_file(str(folder / "W_enc_2.safetensors"))
    save_file({k: v for k, v in t.items() if not k.startswith("threshold")}, str(folder / "W_enc_2.safetensors"))
    with pytest.raises(SAEFormatError, match=r"layers \[0, 1\] have thresholds and \[2\] do not"):
        load_sae(folder)
    from mechscope.sae import REGISTRY

    topk = REGISTRY["clt"](REGISTRY["clt"].config_cls(d_in=CL * D, latents=CL * CM, layers=CL, k=2))
    with pytest.raises(SAEFormatError, match=r"no field for k: this TopK clt \(k=2 < 5 latents per layer\)"):
        FORMATS["circuittracer-clt"].save(topk, tmp_path / "o", {})
    relu = REGISTRY["clt"](REGISTRY["clt"].config_cls(d_in=CL * D, latents=CL * CM, layers=CL, k=CM))
    with pytest.raises(
        SAEFormatError, match=r"site \['mlp_in.1', 'mlp_in.2', 'mlp_in.3'\] are not one hook of blocks 0 … 2"
    ):
        FORMATS["circuittracer-clt"].save(
            relu,
            tmp_path / "o2",
            {"site": ["mlp_in.1", "mlp_in.2", "mlp_in.3"], "target_site": ["mlp_out.1", "mlp_out.2", "mlp_out.3"]},
        )
    with pytest.raises(SAEFormatError, match=r"a 'crosscoder' dictionary has no such folder"):
        FORMATS["circuittracer-clt"].save(perturbed_sae("crosscoder", D, N), tmp_path / "o3", {})


SET_CONFIG = {
    "model_kind": "transcoder_set",
    "model_name": "org/model",
    "feature_input_hook": "mlp.hook_in",
    "feature_output_hook": "hook_mlp_out",
}


def _set_folder(path, config=SET_CONFIG, layers=(0, 1, 2)):
    """A transcoder set as circuit-tracer caches it: layer_i.safetensors (TranscoderSet.to_safetensors) + config.yaml."""
    import yaml

    tensors = {i: _circuittracer(path / f"layer_{i}.safetensors", seed=i)[1] for i in layers}
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path, tensors


def test_circuittracer_sets_convert_layer_by_layer_with_their_sites_and_back(tmp_path):
    import yaml

    folder, tensors = _set_folder(tmp_path / "set")
    with pytest.raises(
        SAEFormatError, match=r"a circuit-tracer transcoder set of 3 layers, not one dictionary: load one layer"
    ):
        load_sae(folder)
    one = load_sae(folder / "layer_1.safetensors")  # a layer read alone knows its sites from the config beside it
    assert (one.arch, one.metadata["site"], one.metadata["target_site"]) == (
        "jumprelu_transcoder",
        "mlp_in.1",
        "mlp_out.1",
    )
    source, own = convert(folder, tmp_path / "own", "mechscope")
    assert source == "circuittracer-set" and sorted(p.name for p in own.iterdir()) == ["layer_0", "layer_1", "layer_2"]
    for i, t in tensors.items():
        sae = load_sae(own / f"layer_{i}")
        meta = json.loads((own / f"layer_{i}" / "cfg.json").read_text())["metadata"]
        assert (meta["site"], meta["target_site"], meta["model_name"]) == (f"mlp_in.{i}", f"mlp_out.{i}", "org/model")
        z = X @ t["W_enc"].T + t["b_enc"]
        with torch.no_grad():
            torch.testing.assert_close(
                sae.encode(X), z * (z > t["activation_function.threshold"]), atol=1e-5, rtol=1e-5
            )
    _, back = convert(own, tmp_path / "back", "circuittracer-set")  # a folder of per-layer transcoders → one set
    assert yaml.safe_load((back / "config.yaml").read_text()) == {
        **SET_CONFIG,
        "feature_input_hook": "ln2.hook_normalized",
    }
    for i, t in tensors.items():
        written = load_file(str(back / f"layer_{i}.safetensors"))
        assert set(written) == set(t) and all(torch.equal(written[k], v) for k, v in t.items())


@pytest.mark.parametrize(
    "make, match",
    [
        (dict(layers=(0, 2)), r"without layer\(s\) \[1\]"),
        (
            dict(config={**SET_CONFIG, "transcoders": ["layer_0.safetensors", "gs/params.npz"]}),
            r"Gemma Scope .npz transcoder\(s\)",
        ),
        (
            dict(config={**SET_CONFIG, "transcoders": ["layer_0.safetensors", "absent.safetensors"]}),
            r"member\(s\) .*absent.safetensors missing",
        ),
        (dict(config={**SET_CONFIG, "feature_input_hook": "hook_resid_mid"}), r"feature_input_hook='hook_resid_mid'"),
        (
            dict(config={**SET_CONFIG, "transcoders": ["hf://no-file"]}),
            r"transcoders entry 'hf://no-file' is not hf://org/name/file",
        ),
    ],
)
def test_circuittracer_set_refusals_name_the_cause(make, match, tmp_path):
    folder, _ = _set_folder(tmp_path / "s", **make)
    with pytest.raises(SAEFormatError, match=match) as err:
        convert(folder, tmp_path / "o", "mechscope")
    assert "\n" not in str(err.value)


def test_a_set_is_written_only_from_transcoders_whose_sites_name_blocks_0_to_L(tmp_path):
    for i in (0, 1):
        save_sae(perturbed_sae("jumprelu_transcoder", D, N), tmp_path / "no_sites" / f"l{i}")
    with pytest.raises(SAEFormatError, match=r"l0: no site of the form kind.L in its metadata"):
        convert(tmp_path / "no_sites", tmp_path / "o", "circuittracer-set")
    for i in (1, 2):
        save_sae(
            perturbed_sae("jumprelu_transcoder", D, N),
            tmp_path / "late" / f"l{i}",
            metadata={"site": f"mlp_in.{i}", "target_site": f"mlp_out.{i}"},
        )
    with pytest.raises(SAEFormatError, match=r"are not one hook of blocks 0 … 1 in order"):
        convert(tmp_path / "late", tmp_path / "o2", "circuittracer-set")
    with pytest.raises(SAEFormatError, match=r"one dictionary; circuittracer-set holds a set of them"):
        convert(tmp_path / "late" / "l1", tmp_path / "o3", "circuittracer-set")


def test_circuittracer_clt_notes_unverified_files_once_and_verifies_ours(tmp_path, capsys):
    folder, _ = _clt_folder(tmp_path / "clt")
    capsys.readouterr()
    load_sae(folder)
    err = capsys.readouterr().err
    assert err.count("mechscope: note:") == 1 and f"6 of the 6 files in {folder} carry no tensor digest" in err
    _, ours = convert(folder, tmp_path / "ours", "circuittracer-clt")
    capsys.readouterr()
    load_sae(ours)
    assert "note" not in capsys.readouterr().err  # ours carry their digest
    file = ours / "W_dec_1.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        header = f.metadata()
    t = load_file(str(file))
    t["W_dec_1"][0, 0, 0] += 1.0
    save_file(t, str(file), metadata=header)
    with pytest.raises(SAEFormatError, match=r"W_dec_1.safetensors: tensor digest mismatch"):
        load_sae(ours)
    with pytest.raises(SAEFormatError, match=r"absent: no such SAE folder"):
        convert(tmp_path / "absent", tmp_path / "o", "circuittracer-set")


def test_a_circuittracer_clt_too_big_for_mechscopes_dense_form_is_refused_before_allocating(tmp_path, monkeypatch):
    import os

    folder, _ = _clt_folder(tmp_path / "clt")
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 1024, "SC_PHYS_PAGES": 2}[name])
    with pytest.raises(
        SAEFormatError,
        match=r"this 3-layer CLT \(m=5, d=8\) takes 2.68e-06 GiB in mechscope's masked dense "
        r"form, more than this machine's 1.91e-06 GiB",
    ):
        load_sae(folder)
