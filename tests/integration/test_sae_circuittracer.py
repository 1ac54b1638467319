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

from mechscope.sae import load_sae
from mechscope.sae.formats import FORMATS
from tests.harness import perturbed_sae
from tests.helpers_peers import peer_python, require_peer, run_peer

PYTHON = peer_python("MECHSCOPE_CIRCUITTRACER_PYTHON", "circuit-tracer")
D, N = 16, 48
KINDS = {"jumprelu_transcoder": (True, False), "jumprelu_skip_transcoder": (True, True),
         "transcoder": (False, False), "skip_transcoder": (False, True)}

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
        worst[f"write {name}"] = (float((got[f"ours.{name}.codes"] - want_codes).abs().max()),
                                  float((got[f"ours.{name}.out"] - want_out).abs().max()))
        torch.testing.assert_close(mine_codes, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine_out, out, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got[f"ours.{name}.codes"], want_codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[f"ours.{name}.out"], want_out, atol=1e-4, rtol=1e-5)
    print("max |Δ| (codes, outputs):", worst)
