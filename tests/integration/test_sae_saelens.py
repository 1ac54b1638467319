"""Interoperability with the real ``sae-lens`` package, run from its own venv in a subprocess.

SAELens writes SAEs of every architecture it shares with mechscope (and BatchTopK / TopK training SAEs
saved for inference); mechscope loads them and must give the same codes and reconstructions. The
other way round, SAELens loads the SAELens-layout folders mechscope writes and must encode alike.

The venv comes from ``.ci/setup-saelens``; its python is ``$MECHSCOPE_SAELENS_PYTHON`` (default
/tmp/mechscope-peers/saelens/bin/python). The test skips when that interpreter is absent, except in
CI (``CI`` set), where .ci/run builds the venv first and its absence fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechscope.sae import REGISTRY, SAEFormatError, load_sae, save_sae
from tests.harness import perturbed_sae
from tests.helpers_peers import require_peer

PYTHON = Path(os.environ.get("MECHSCOPE_SAELENS_PYTHON", "/tmp/mechscope-peers/saelens/bin/python"))
D, N = 16, 48
SCALE = 0.37

SAELENS_SIDE = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    import sae_lens as sl

    root, D, N, SCALE = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    x = load_file(str(root / "x.safetensors"))["x"]
    out = {}
    gen = torch.Generator().manual_seed(0)

    def randomise(sae):
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            if hasattr(sae, "threshold"):
                sae.threshold.copy_(0.3 * torch.rand(sae.threshold.shape, generator=gen))
        return sae

    def record(name, sae):
        with torch.no_grad():
            codes = sae.encode(x)
            out[name + ".codes"], out[name + ".recon"] = codes, sae.decode(codes)

    inference = {
        "standard": sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=N)),
        "standard_raw_input": sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=N, apply_b_dec_to_input=False)),
        "topk": sl.TopKSAE(sl.TopKSAEConfig(d_in=D, d_sae=N, k=5)),
        "topk_rescaled": sl.TopKSAE(sl.TopKSAEConfig(d_in=D, d_sae=N, k=5, rescale_acts_by_decoder_norm=True)),
        "jumprelu": sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D, d_sae=N)),
        "gated": sl.GatedSAE(sl.GatedSAEConfig(d_in=D, d_sae=N)),
    }
    for name, sae in inference.items():
        randomise(sae).save_model(root / "from_saelens" / name)
        record(name, sae)

    # Training SAEs saved for inference (BatchTopK becomes a JumpReLU with one threshold).
    training = {
        "batchtopk_training": sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=5)),
        "topk_training": sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=D, d_sae=N, k=5)),
    }
    for name, sae in training.items():
        randomise(sae)
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold = torch.tensor(0.4)
        sae.save_inference_model(root / "from_saelens" / name)
        record(name, sl.SAE.load_from_disk(root / "from_saelens" / name))

    # An SAE that reads s·x (expected_average_only_in) saved unfolded; SAELens's own fold is the reference.
    scaled = randomise(sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=N, normalize_activations="expected_average_only_in")))
    scaled.save_model(root / "scaled" / "standard_scaled")
    scaled.fold_activation_norm_scaling_factor(SCALE)
    record("scaled.standard_scaled", scaled)

    # mechscope's SAELens-layout folders, read by SAELens, with the hook and model they attach to.
    attach = {}
    for folder in sorted((root / "from_mechscope").iterdir()):
        sae = sl.SAE.load_from_disk(folder)
        with torch.no_grad():
            out["mech." + folder.name + ".codes"] = sae.encode(x)
        attach[folder.name] = [sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name]
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    (root / "attach.json").write_text(json.dumps(attach))
    print("ok", sl.__version__ if hasattr(sl, "__version__") else "")
    """
)


def _mechscope_sae(arch: str):
    return perturbed_sae(arch, D, N, k=5, seed=7, scale=0.4)


def _require_saelens() -> None:
    """Skip without the sae-lens venv, but only outside CI: in CI (CI set) its absence is a failure."""
    require_peer(PYTHON, "SAELens", "setup-saelens", "MECHSCOPE_SAELENS_PYTHON")


def test_saelens_files_load_and_encode_identically_both_ways(tmp_path):
    _require_saelens()
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = {
        arch: _mechscope_sae(arch) for arch, cls in REGISTRY.items() if not cls.paired and arch != "crosscoder"
    }  # transcoders: test_transcoder_saelens.py; no SAELens crosscoder
    for i, (arch, sae) in enumerate(ours.items()):
        save_sae(
            sae,
            tmp_path / "from_mechscope" / arch,
            layout="saelens",
            metadata={"site": f"model.layers.{i}", "model_id": "SmolLM2-135M-Instruct"},
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [str(PYTHON), "-c", SAELENS_SIDE, str(tmp_path), str(D), str(N), str(SCALE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = load_file(str(tmp_path / "out.safetensors"))

    # SAELens reads the hook and model each exported SAE attaches to.
    attach = json.loads((tmp_path / "attach.json").read_text())
    assert attach == {
        arch: [f"blocks.{i}.hook_resid_post", "HuggingFaceTB/SmolLM2-135M-Instruct"] for i, arch in enumerate(ours)
    }

    # An SAE that reads s·x loads only with s, and then encodes as SAELens's own fold does.
    with pytest.raises(SAEFormatError, match="expected_average_only_in"):
        load_sae(tmp_path / "scaled" / "standard_scaled")
    scaled = load_sae(tmp_path / "scaled" / "standard_scaled", scaling_factor=SCALE)
    want = got["scaled.standard_scaled.codes"]
    assert float((want != 0).float().mean()) > 0.02
    assert torch.allclose(scaled.encode(x).detach(), want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(scaled.decode(want).detach(), got["scaled.standard_scaled.recon"], atol=1e-4, rtol=1e-4)

    names = sorted({k.split(".")[0] for k in got if not k.startswith(("mech.", "scaled."))})
    assert len(names) == 8
    for name in names:
        sae = load_sae(tmp_path / "from_saelens" / name)
        codes = sae.encode(x).detach()
        want = got[name + ".codes"]
        assert float((want != 0).float().mean()) > 0.02, name  # not a comparison of zeros
        assert torch.allclose(codes, want, atol=1e-5, rtol=1e-4), name
        assert torch.allclose(sae.decode(codes).detach(), got[name + ".recon"], atol=1e-4, rtol=1e-4), name

    for arch, sae in ours.items():
        want = sae.encode(x).detach()
        assert float((want != 0).float().mean()) > 0.02, arch
        assert torch.allclose(got[f"mech.{arch}.codes"], want, atol=1e-5, rtol=1e-4), arch
