"""Interoperability with EleutherAI's ``eai-sparsify``, run from its own venv in a subprocess (issue 26).

sparsify writes an SAE, a transcoder and a skip-transcoder with random weights; mechscope loads each and must
give sparsify's codes and outputs on the same inputs. The other way round, sparsify's own ``load_from_disk``
loads the folders mechscope writes and must reproduce mechscope's codes and outputs.

The venv comes from ``.ci/setup-sparsify`` (python: ``$MECHSCOPE_SPARSIFY_PYTHON``, default
/tmp/mechscope-peers/sparsify/bin/python); the test skips without it, except in CI, where it fails.
"""

from __future__ import annotations

import json
import textwrap

import torch
from safetensors.torch import save_file

from mechscope.sae import load_sae
from mechscope.sae.formats import FORMATS
from tests.harness import perturbed_sae
from tests.helpers_peers import peer_python, require_peer, run_peer

PYTHON = peer_python("MECHSCOPE_SPARSIFY_PYTHON", "sparsify")
D, N, K = 16, 48, 5
KINDS = {"topk": {}, "transcoder": {"transcode": True}, "skip_transcoder": {"transcode": True, "skip_connection": True}}

SPARSIFY_SIDE = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from sparsify import SparseCoder, SparseCoderConfig

    root, D, N, K = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    kinds = json.loads(sys.argv[5])
    x = load_file(str(root / "x.safetensors"))["x"]
    gen = torch.Generator().manual_seed(0)
    out = {}

    def record(name, coder):
        with torch.no_grad():
            acts, idx, _ = coder.encode(x)
            codes = torch.zeros(x.shape[0], coder.num_latents).scatter_(1, idx, acts)
            y = coder.decode(acts, idx)
            if coder.W_skip is not None:
                y = y + x @ coder.W_skip.mT
        out[name + ".codes"], out[name + ".out"] = codes, y

    for name, flags in kinds.items():
        coder = SparseCoder(D, SparseCoderConfig(num_latents=N, k=K, **flags))
        with torch.no_grad():
            for p in coder.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        coder.save_to_disk(root / "from_sparsify" / name)
        record("theirs." + name, coder)
        record("ours." + name, SparseCoder.load_from_disk(root / "from_mechscope" / name))
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))
    """
)


def test_sparsify_folders_load_identically_both_ways(tmp_path):
    require_peer(PYTHON, "sparsify", "setup-sparsify", "MECHSCOPE_SPARSIFY_PYTHON")
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    ours = {name: perturbed_sae(name, D, N, k=K, seed=7, scale=0.4) for name in KINDS}
    for name, sae in ours.items():
        FORMATS["sparsify"].save(sae, tmp_path / "from_mechscope" / name, {})
    got = run_peer(PYTHON, SPARSIFY_SIDE, tmp_path, D, N, K, json.dumps(KINDS))
    worst = {}
    for name in KINDS:
        # sparsify's files → mechscope: the same codes and outputs.
        sae = load_sae(tmp_path / "from_sparsify" / name)
        assert (sae.arch, sae.file_format) == (name, "sparsify")
        codes, out = got[f"theirs.{name}.codes"], got[f"theirs.{name}.out"]
        assert int((codes != 0).sum(1).min()) == K
        with torch.no_grad():
            mine_codes, mine_out = sae.encode(x), sae.predict(x)
        worst[f"read {name}"] = (float((mine_codes - codes).abs().max()), float((mine_out - out).abs().max()))
        torch.testing.assert_close(mine_codes, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine_out, out, atol=1e-4, rtol=1e-5)
        # mechscope's folders → sparsify's own loader: mechscope's codes and outputs.
        with torch.no_grad():
            want_codes, want_out = ours[name].encode(x), ours[name].predict(x)
        worst[f"write {name}"] = (
            float((got[f"ours.{name}.codes"] - want_codes).abs().max()),
            float((got[f"ours.{name}.out"] - want_out).abs().max()),
        )
        torch.testing.assert_close(got[f"ours.{name}.codes"], want_codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[f"ours.{name}.out"], want_out, atol=1e-4, rtol=1e-5)
    print("max |Δ| (codes, outputs):", worst)
