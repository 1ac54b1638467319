"""Transcoders and the real ``sae-lens`` package (its venv from ``.ci/setup-saelens``, as
test_sae_saelens.py): SAELens's ReLU transcoder and skip-transcoder files load in mechscope (as k =
latents), and its JumpReLU transcoder and skip-transcoder files as mechscope's JumpReLU transcoders, with
the same codes and outputs; mechscope's files of all four load in SAELens alike."""

from __future__ import annotations

import os
import subprocess
import textwrap

import torch
from safetensors.torch import load_file, save_file
from test_sae_saelens import PYTHON, _require_saelens

from mechscope.sae import load_sae, save_sae

D_IN, D_OUT, N = 12, 9, 40

SAELENS_SIDE = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    import sae_lens as sl

    root, D_IN, D_OUT, N = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    x = load_file(str(root / "x.safetensors"))["x"]
    out, gen = {}, torch.Generator().manual_seed(0)
    kw = dict(d_in=D_IN, d_sae=N, d_out=D_OUT, apply_b_dec_to_input=False)
    made = {"transcoder": sl.Transcoder(sl.TranscoderConfig(**kw)),
            "skip_transcoder": sl.SkipTranscoder(sl.SkipTranscoderConfig(**kw)),
            "jumprelu_transcoder": sl.JumpReLUTranscoder(sl.JumpReLUTranscoderConfig(**kw)),
            "jumprelu_skip_transcoder": sl.JumpReLUSkipTranscoder(sl.JumpReLUSkipTranscoderConfig(**kw))}
    for name, tc in made.items():
        with torch.no_grad():
            for pname, p in tc.named_parameters():
                p.copy_(0.5 * torch.rand(p.shape, generator=gen) if pname == "threshold" else 0.5 * torch.randn(p.shape, generator=gen))
        tc.save_model(root / "from_saelens" / name)
        with torch.no_grad():
            out[name + ".codes"], out[name + ".out"] = tc.encode(x), tc(x)
    for folder in sorted((root / "from_mechscope").iterdir()):
        tc = sl.SAE.load_from_disk(folder)
        with torch.no_grad():
            out["mech." + folder.name + ".codes"], out["mech." + folder.name + ".out"] = tc.encode(x), tc(x)
        out["mech." + folder.name + ".type"] = torch.tensor([type(tc).__name__ == {"transcoder": "Transcoder", "skip_transcoder": "SkipTranscoder",
                                                             "jumprelu_transcoder": "JumpReLUTranscoder",
                                                             "jumprelu_skip_transcoder": "JumpReLUSkipTranscoder"}[folder.name]])
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    """
)


def _ours(arch: str):
    """A perturbed transcoder with d_out ≠ d_in: k = latents for the TopK kinds (ReLU codes, as SAELens's), and
    thresholds spread over [0, 0.6] for the JumpReLU kinds."""
    from mechscope.sae import REGISTRY

    cls = REGISTRY[arch]
    kw = {"k": N} if "k" in cls.config_cls.__dataclass_fields__ else {}
    tc = cls(cls.config_cls(d_in=D_IN, d_out=D_OUT, latents=N, **kw), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            p.copy_(0.6 * torch.rand(p.shape, generator=g)) if name == "threshold" else p.add_(
                0.4 * torch.randn(p.shape, generator=g)
            )
    return tc.eval()


def test_saelens_transcoders_load_and_predict_identically_both_ways(tmp_path):
    _require_saelens()
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = {
        arch: _ours(arch)
        for arch in ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
    }
    for arch, tc in ours.items():
        save_sae(
            tc,
            tmp_path / "from_mechscope" / arch,
            layout="saelens",
            metadata={"site": "mlp_in.3", "target_site": "mlp_out.3"},
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [str(PYTHON), "-c", SAELENS_SIDE, str(tmp_path), str(D_IN), str(D_OUT), str(N)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = load_file(str(tmp_path / "out.safetensors"))
    for arch, tc in ours.items():
        # SAELens reads our files as its own class and computes what we compute.
        assert bool(got[f"mech.{arch}.type"].all())
        codes = tc.encode(x).detach()
        assert float((codes != 0).float().mean()) > 0.1  # ReLU codes, not all zeros
        assert torch.allclose(got[f"mech.{arch}.codes"], codes, atol=1e-5)
        assert torch.allclose(got[f"mech.{arch}.out"], tc.predict(x).detach(), atol=1e-4)
        # SAELens's own files load here and give its codes and outputs.
        theirs = load_sae(tmp_path / "from_saelens" / arch)
        assert type(theirs) is type(tc) and getattr(theirs.cfg, "k", N) == N and theirs.d_out == D_OUT
        assert torch.allclose(theirs.encode(x).detach(), got[f"{arch}.codes"], atol=1e-5)
        assert torch.allclose(theirs.predict(x).detach(), got[f"{arch}.out"], atol=1e-4)
