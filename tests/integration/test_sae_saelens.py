"""Interoperability with the real ``sae-lens`` package, run from its own venv in a subprocess.

SAELens writes SAEs of every architecture it shares with mechscope (and BatchTopK / TopK training SAEs
saved for inference); mechscope loads them and must give the same codes and reconstructions. The
other way round, SAELens loads the SAELens-layout folders mechscope writes and must encode alike.

The venv comes from ``.ci/setup-saelens``; its python is ``$MECHSCOPE_SAELENS_PYTHON`` (default
/tmp/mechscope-peers/saelens/bin/python). The test skips only when that interpreter is absent.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechscope.sae import REGISTRY, load_sae, save_sae
from mechscope.testing import perturbed_sae

PYTHON = Path(os.environ.get("MECHSCOPE_SAELENS_PYTHON", "/tmp/mechscope-peers/saelens/bin/python"))
D, N = 16, 48

SAELENS_SIDE = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    import sae_lens as sl

    root, D, N = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
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

    # mechscope's SAELens-layout folders, read by SAELens.
    for folder in sorted((root / "from_mechscope").iterdir()):
        sae = sl.SAE.load_from_disk(folder)
        with torch.no_grad():
            out["mech." + folder.name + ".codes"] = sae.encode(x)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    print("ok", sl.__version__ if hasattr(sl, "__version__") else "")
    """
)


def _mechscope_sae(arch: str):
    return perturbed_sae(arch, D, N, k=5, seed=7, scale=0.4)


@pytest.mark.skipif(not PYTHON.exists(), reason=f"no sae-lens venv at {PYTHON} (run .ci/setup-saelens or set MECHSCOPE_SAELENS_PYTHON)")
def test_saelens_files_load_and_encode_identically_both_ways(tmp_path):
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = {arch: _mechscope_sae(arch) for arch in REGISTRY}
    for arch, sae in ours.items():
        save_sae(sae, tmp_path / "from_mechscope" / arch, layout="saelens")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(PYTHON), "-c", SAELENS_SIDE, str(tmp_path), str(D), str(N)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    got = load_file(str(tmp_path / "out.safetensors"))

    names = sorted({k.split(".")[0] for k in got if not k.startswith("mech.")})
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
