"""Interoperability with ``circuit-tracer`` 0.5.0's single-layer transcoder files, run from its own venv (issue 26).

circuit-tracer writes JumpReLU and ReLU transcoders, with and without a skip term (``to_safetensors``); mechscope
loads each and must give circuit-tracer's codes and outputs on the same inputs. The other way round,
circuit-tracer's ``load_relu_transcoder`` loads the files mechscope writes and must reproduce mechscope's.

The venv comes from ``.ci/setup-circuittracer`` (python: ``$MECHSCOPE_CIRCUITTRACER_PYTHON``, default
/tmp/mechscope-peers/circuit-tracer/bin/python); the test skips without it, except in CI, where it fails.
"""

from __future__ import annotations

import textwrap

import torch
from safetensors.torch import save_file

from mechscope.sae import REGISTRY, load_sae
from mechscope.sae.formats import FORMATS
from tests.harness import perturbed_sae
from tests.helpers_peers import peer_python, require_peer, run_peer

PYTHON = peer_python("MECHSCOPE_CIRCUITTRACER_PYTHON", "circuit-tracer")
D, N = 16, 48
KINDS = {
    "jumprelu_transcoder": (True, False),
    "jumprelu_skip_transcoder": (True, True),
    "transcoder": (False, False),
    "skip_transcoder": (False, True),
}

TRACER_SIDE = textwrap.dedent(
    """
    import sys, torch
    import torch.nn.functional as F
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, load_relu_transcoder

    root, D, N = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    kinds = {name: (jump == "1", skip == "1") for name, jump, skip in (k.split(":") for k in sys.argv[4:])}
    x = load_file(str(root / "x.safetensors"))["x"]
    gen = torch.Generator().manual_seed(0)
    out = {}

    def record(name, tc):
        with torch.no_grad():
            codes = tc.encode(x)
            out[name + ".codes"], out[name + ".out"] = codes, tc.decode(codes, x)

    for name, (jump, skip) in kinds.items():
        act = JumpReLU(0.4 * torch.rand(N, generator=gen), 0.1) if jump else F.relu
        tc = SingleLayerTranscoder(D, N, act, 0, skip_connection=skip, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for p_name, p in tc.named_parameters():
                if p_name != "activation_function.threshold":
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        (root / "from_tracer").mkdir(exist_ok=True)
        tc.to_safetensors(str(root / "from_tracer" / f"{name}.safetensors"))
        record("theirs." + name, tc)
        ours = load_relu_transcoder(str(root / "from_mechscope" / name / "transcoder.safetensors"), 0,
                                    device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
        record("ours." + name, ours)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    """
)


def test_circuittracer_transcoders_load_identically_both_ways(tmp_path):
    require_peer(PYTHON, "circuit-tracer", "setup-circuittracer", "MECHSCOPE_CIRCUITTRACER_PYTHON")
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = {name: perturbed_sae(name, D, N, k=N, seed=7, scale=0.4) for name in KINDS}
    for name, sae in ours.items():
        FORMATS["circuittracer"].save(sae, tmp_path / "from_mechscope" / name, {})
    got = run_peer(PYTHON, TRACER_SIDE, tmp_path, D, N, *(f"{n}:{int(j)}:{int(s)}" for n, (j, s) in KINDS.items()))
    worst = {}
    for name in KINDS:
        sae = load_sae(tmp_path / "from_tracer" / f"{name}.safetensors")
        assert (sae.arch, sae.file_format) == (name, "circuittracer")
        codes, out = got[f"theirs.{name}.codes"], got[f"theirs.{name}.out"]
        assert 0.05 < float((codes != 0).float().mean()) < 0.95
        with torch.no_grad():
            mine_codes, mine_out = sae.encode(x), sae.predict(x)
            want_codes, want_out = ours[name].encode(x), ours[name].predict(x)
        worst[f"read {name}"] = (float((mine_codes - codes).abs().max()), float((mine_out - out).abs().max()))
        worst[f"write {name}"] = (
            float((got[f"ours.{name}.codes"] - want_codes).abs().max()),
            float((got[f"ours.{name}.out"] - want_out).abs().max()),
        )
        torch.testing.assert_close(mine_codes, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine_out, out, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got[f"ours.{name}.codes"], want_codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[f"ours.{name}.out"], want_out, atol=1e-4, rtol=1e-5)
    print("max |Δ| (codes, outputs):", worst)


CLT_L, CLT_M = 3, 12
CLT_ARCHS = {"jump_relu": "jumprelu_clt", "relu": "clt"}

CLT_SIDE = textwrap.dedent(
    """
    import json, sys, torch, yaml
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    root, L, m, d = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    x = load_file(str(root / "x.safetensors"))["x"]  # [L, B, d]: layer l's MLP input at B positions
    gen = torch.Generator().manual_seed(0)
    out, hooks = {}, {}

    def record(name, clt):
        with torch.no_grad():
            codes = clt.encode(x)
            out[name + ".codes"], out[name + ".out"] = codes, clt.decode(codes)

    for act in ("jump_relu", "relu"):
        clt = CrossLayerTranscoder(L, m, d, activation_function=act, lazy_decoder=False, device=torch.device("cpu"),
                                   dtype=torch.float32)
        with torch.no_grad():
            for name, p in clt.named_parameters():
                p.copy_(0.4 * torch.rand(p.shape, generator=gen) if "threshold" in name else 0.5 * torch.randn(p.shape, generator=gen))
        folder = root / "from_tracer" / act
        clt.to_safetensors(str(folder))
        (folder / "config.yaml").write_text(yaml.safe_dump({"model_kind": "cross_layer_transcoder", "model_name": "peer/model",
                                                            "feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}))
        record("theirs." + act, clt)
        # ours, as a user finds it: a cached transcoder folder that circuit-tracer loads by its config.yaml
        ours, config = load_transcoders_from_cache("mechscope/" + act, cache_dir=str(root / "from_mechscope"),
                                                   device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
        assert type(ours).__name__ == "CrossLayerTranscoder", type(ours)
        hooks[act] = [config["model_name"], ours.feature_input_hook, ours.feature_output_hook,
                      type(ours.activation_function).__name__]
        record("ours." + act, ours)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    (root / "hooks.json").write_text(json.dumps(hooks))
    """
)


def _layers_to_rows(t: torch.Tensor) -> torch.Tensor:
    """circuit-tracer's [L, B, w] → mechscope's rows [B, L·w] (layer blocks side by side)."""
    return t.permute(1, 0, 2).reshape(t.shape[1], -1)


def test_circuittracer_clts_and_their_config_load_identically_both_ways(tmp_path):
    import json

    require_peer(PYTHON, "circuit-tracer", "setup-circuittracer", "MECHSCOPE_CIRCUITTRACER_PYTHON")
    x = torch.randn(CLT_L, 40, D, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    rows = _layers_to_rows(x)
    meta = {
        "site": [f"mlp_in.{i}" for i in range(CLT_L)],
        "target_site": [f"mlp_out.{i}" for i in range(CLT_L)],
        "model_id": "SmolLM2-135M-Instruct",
    }
    ours = {}
    for act, arch in CLT_ARCHS.items():
        cls = REGISTRY[arch]
        kw = {"k": CLT_M} if arch == "clt" else {}
        sae = cls(
            cls.config_cls(d_in=CLT_L * D, latents=CLT_L * CLT_M, layers=CLT_L, **kw),
            generator=torch.Generator().manual_seed(5),
        )
        with torch.no_grad():
            g = torch.Generator().manual_seed(6)
            sae.b_enc.add_(0.3 * torch.randn(sae.b_enc.shape, generator=g))
            sae.b_dec.add_(0.3 * torch.randn(sae.b_dec.shape, generator=g))
            if arch == "jumprelu_clt":
                sae.threshold.copy_(0.3 * torch.rand(sae.threshold.shape, generator=g))
        ours[act] = sae.eval()
        FORMATS["circuittracer-clt"].save(sae, tmp_path / "from_mechscope" / "mechscope" / act, meta)
    got = run_peer(PYTHON, CLT_SIDE, tmp_path, CLT_L, CLT_M, D)
    hooks = json.loads((tmp_path / "hooks.json").read_text())
    worst = {}
    for act, arch in CLT_ARCHS.items():
        assert hooks[act] == [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "ln2.hook_normalized",
            "hook_mlp_out",
            "JumpReLU" if act == "jump_relu" else "function",
        ]
        sae = load_sae(tmp_path / "from_tracer" / act)
        assert (sae.arch, sae.file_format) == (arch, "circuittracer-clt")
        assert sae.metadata["site"] == [f"mlp_in.{i}" for i in range(CLT_L)]
        assert sae.metadata["target_site"] == [f"mlp_out.{i}" for i in range(CLT_L)]
        codes, out = _layers_to_rows(got[f"theirs.{act}.codes"]), _layers_to_rows(got[f"theirs.{act}.out"])
        assert 0.05 < float((codes != 0).float().mean()) < 0.95
        with torch.no_grad():
            mine_codes, mine_out = sae.encode(rows), sae.predict(rows)
            want_codes, want_out = ours[act].encode(rows), ours[act].predict(rows)
        their_codes, their_out = _layers_to_rows(got[f"ours.{act}.codes"]), _layers_to_rows(got[f"ours.{act}.out"])
        assert 0.05 < float((want_codes != 0).float().mean()) < 0.95
        worst[f"read {act}"] = (float((mine_codes - codes).abs().max()), float((mine_out - out).abs().max()))
        worst[f"write {act}"] = (
            float((their_codes - want_codes).abs().max()),
            float((their_out - want_out).abs().max()),
        )
        torch.testing.assert_close(mine_codes, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine_out, out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(their_codes, want_codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(their_out, want_out, atol=1e-5, rtol=1e-5)
    print("max |Δ| (codes, outputs):", worst)


SET_SIDE = textwrap.dedent(
    """
    import json, sys, torch, yaml
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    root, L, D, N = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    x = load_file(str(root / "x.safetensors"))["x"]  # [L, B, D]
    gen = torch.Generator().manual_seed(0)
    layers = {}
    for i in range(L):
        tc = SingleLayerTranscoder(D, N, JumpReLU(0.4 * torch.rand(N, generator=gen), 0.1), i, skip_connection=True,
                                   device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for name, p in tc.named_parameters():
                if name != "activation_function.threshold":
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        layers[i] = tc
    theirs = TranscoderSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out")
    theirs.to_safetensors(str(root / "from_tracer"))
    (root / "from_tracer" / "config.yaml").write_text(yaml.safe_dump({"model_kind": "transcoder_set", "model_name": "peer/model",
        "feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}))
    ours, config = load_transcoders_from_cache("mechscope/set", cache_dir=str(root / "from_mechscope"),
                                               device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False, lazy_encoder=False)
    out = {}
    for name, s in (("theirs", theirs), ("ours", ours)):
        with torch.no_grad():
            codes = s.encode(x)
            out[name + ".codes"], out[name + ".out"] = codes, s.decode(codes, x)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    (root / "hooks.json").write_text(json.dumps([type(ours).__name__, config["model_name"], ours.feature_input_hook,
                                                 ours.feature_output_hook, ours.skip_connection]))
    """
)


def test_circuittracer_transcoder_sets_and_their_config_load_identically_both_ways(tmp_path):
    import json

    from mechscope.sae import save_sae
    from mechscope.sae.formats import convert

    require_peer(PYTHON, "circuit-tracer", "setup-circuittracer", "MECHSCOPE_CIRCUITTRACER_PYTHON")
    x = torch.randn(CLT_L, 40, D, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = [perturbed_sae("jumprelu_skip_transcoder", D, N, seed=10 + i, scale=0.4) for i in range(CLT_L)]
    for i, sae in enumerate(ours):  # a folder of per-layer transcoders as mechscope trains them, written as one set
        save_sae(
            sae,
            tmp_path / "trained" / f"mlp{i}",
            metadata={"site": f"mlp_in.{i}", "target_site": f"mlp_out.{i}", "model_id": "SmolLM2-135M-Instruct"},
        )
    convert(tmp_path / "trained", tmp_path / "from_mechscope" / "mechscope" / "set", "circuittracer-set")
    got = run_peer(PYTHON, SET_SIDE, tmp_path, CLT_L, D, N)
    assert json.loads((tmp_path / "hooks.json").read_text()) == [
        "TranscoderSet",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "ln2.hook_normalized",
        "hook_mlp_out",
        True,
    ]
    convert(tmp_path / "from_tracer", tmp_path / "read", "mechscope")
    worst = {}
    for i in range(CLT_L):
        sae = load_sae(tmp_path / "read" / f"layer_{i}")
        assert (sae.arch, sae.metadata["site"], sae.metadata["target_site"]) == (
            "jumprelu_skip_transcoder",
            f"mlp_in.{i}",
            f"mlp_out.{i}",
        )
        with torch.no_grad():
            mine_codes, mine_out = sae.encode(x[i]), sae.predict(x[i])
            want_codes, want_out = ours[i].encode(x[i]), ours[i].predict(x[i])
        assert 0.05 < float((got["theirs.codes"][i] != 0).float().mean()) < 0.95
        assert 0.05 < float((want_codes != 0).float().mean()) < 0.95
        worst[f"read layer {i}"] = (
            float((mine_codes - got["theirs.codes"][i]).abs().max()),
            float((mine_out - got["theirs.out"][i]).abs().max()),
        )
        worst[f"write layer {i}"] = (
            float((got["ours.codes"][i] - want_codes).abs().max()),
            float((got["ours.out"][i] - want_out).abs().max()),
        )
        torch.testing.assert_close(mine_codes, got["theirs.codes"][i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine_out, got["theirs.out"][i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["ours.codes"][i], want_codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["ours.out"][i], want_out, atol=1e-5, rtol=1e-5)
    print("max |Δ| (codes, outputs):", worst)
