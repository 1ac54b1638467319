"""Interoperability with ``dictionary-learning``, run from its own venv in a subprocess (issue 26).

The package's own ``trainSAE`` trains every trainer it ships for a few steps on random activations (standard,
its April-update form with AutoEncoderNew, p-anneal, gated, gated-anneal, TopK, BatchTopK, Matryoshka BatchTopK,
JumpReLU) and saves ``ae.pt`` + ``config.json`` as it does for any run; the package's classes then load each file
and encode the same inputs. mechscope loads the same folders and must give the same codes and reconstructions, with
BatchTopK and Matryoshka run at their learned threshold, as the package's default ``encode`` does.

The venv comes from ``.ci/setup-dictlearn`` (python: ``$MECHSCOPE_DICTLEARN_PYTHON``, default
/tmp/mechscope-peers/dictlearn/bin/python); the test skips without it, except in CI, where it fails.
"""

from __future__ import annotations

import textwrap

import torch
from safetensors.torch import save_file

from mechscope.sae import load_sae
from tests.helpers_peers import peer_python, require_peer, run_peer

PYTHON = peer_python("MECHSCOPE_DICTLEARN_PYTHON", "dictlearn")
D, N, K = 16, 64, 4
ARCHS = {
    "standard": "relu",
    "april": "relu",
    "panneal": "relu",
    "gated": "gated",
    "gated_anneal": "gated",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "matryoshka": "matryoshka",
    "jumprelu": "jumprelu",
}

DICTLEARN_SIDE = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from safetensors.torch import load_file, save_file
    from dictionary_learning.training import trainSAE
    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.standard import StandardTrainer, StandardTrainerAprilUpdate
    from dictionary_learning.trainers.p_anneal import PAnnealTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.gated_anneal import GatedAnnealTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer, AutoEncoderTopK
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer, BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer, MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer

    root, D, N, K = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    x = load_file(str(root / "x.safetensors"))["x"]
    torch.manual_seed(0)
    mix = torch.randn(D, D)
    steps = 20
    common = dict(steps=steps, activation_dim=D, dict_size=N, layer=0, lm_name="peer", device="cpu", seed=0,
                  warmup_steps=2)
    quick = dict(sparsity_warmup_steps=2)
    anneal = dict(anneal_start=10, n_sparsity_updates=4, sparsity_queue_length=4, p_end=0.5, **quick)
    thresholded = dict(k=K, threshold_start_step=5, threshold_beta=0.9)
    trainers = {
        "standard": (dict(trainer=StandardTrainer, **quick), lambda p: AutoEncoder.from_pretrained(p, normalize_decoder=False)),
        "april": (dict(trainer=StandardTrainerAprilUpdate, dict_class=AutoEncoderNew, **quick), AutoEncoderNew.from_pretrained),
        "panneal": (dict(trainer=PAnnealTrainer, **anneal), lambda p: AutoEncoder.from_pretrained(p, normalize_decoder=False)),
        "gated": (dict(trainer=GatedSAETrainer, **quick), GatedAutoEncoder.from_pretrained),
        "gated_anneal": (dict(trainer=GatedAnnealTrainer, **anneal), GatedAutoEncoder.from_pretrained),
        "topk": (dict(trainer=TopKTrainer, **thresholded), AutoEncoderTopK.from_pretrained),
        "batchtopk": (dict(trainer=BatchTopKTrainer, **thresholded), BatchTopKSAE.from_pretrained),
        "matryoshka": (dict(trainer=MatryoshkaBatchTopKTrainer, group_fractions=[0.25, 0.75], **thresholded),
                       MatryoshkaBatchTopKSAE.from_pretrained),
        "jumprelu": (dict(trainer=JumpReluTrainer, target_l0=K, **quick), JumpReluAutoEncoder.from_pretrained),
    }
    data = (torch.relu(torch.randn(64, D)) @ mix for _ in range(steps + 1))
    trainSAE(data, [dict(cfg, **common) for cfg, _ in trainers.values()], steps=steps, save_dir=str(root / "runs"),
             device="cpu")
    out = {}
    for i, (name, (_, load)) in enumerate(trainers.items()):
        ae = load(str(root / "runs" / f"trainer_{i}" / "ae.pt"))
        with torch.no_grad():
            codes = ae.encode(x)
            out[name + ".codes"], out[name + ".recon"] = codes, ae.decode(codes)
        if hasattr(ae, "threshold") and ae.threshold.numel() == 1:
            out[name + ".threshold"] = ae.threshold.reshape(1)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "out.safetensors"))

    # everything the package ships, so that a trainer or dictionary class this test does not know fails it
    import importlib, inspect, json, pkgutil
    import dictionary_learning.dictionary as dictionaries
    import dictionary_learning.trainers as trainer_pkg
    from dictionary_learning.trainers.trainer import SAETrainer
    mods = [importlib.import_module("dictionary_learning.trainers." + m.name) for m in pkgutil.iter_modules(trainer_pkg.__path__)]
    shipped = {c.__name__ for m in mods for _, c in inspect.getmembers(m, inspect.isclass) if issubclass(c, SAETrainer) and c is not SAETrainer}
    def subclasses(c):
        return {s for x in c.__subclasses__() for s in {x} | subclasses(x)}
    (root / "shipped.json").write_text(json.dumps({"trainers": sorted(shipped), "trained": sorted(c["trainer"].__name__ for c, _ in trainers.values()),
                                                   "dictionaries": sorted(c.__name__ for c in subclasses(dictionaries.Dictionary))}))
    """
)


def test_every_trainer_loads_with_the_packages_codes_and_reconstructions(tmp_path):
    require_peer(PYTHON, "dictionary_learning", "setup-dictlearn", "MECHSCOPE_DICTLEARN_PYTHON")
    x = torch.relu(torch.randn(64, D, generator=torch.Generator().manual_seed(1))) @ torch.randn(
        D, D, generator=torch.Generator().manual_seed(2)
    )
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    got = run_peer(PYTHON, DICTLEARN_SIDE, tmp_path, D, N, K, timeout=240)
    worst = {}
    for i, (name, arch) in enumerate(ARCHS.items()):
        sae = load_sae(tmp_path / "runs" / f"trainer_{i}")
        assert (sae.arch, sae.file_format) == (arch, "dictlearn"), name
        codes, recon = got[f"{name}.codes"], got[f"{name}.recon"]
        assert float((codes != 0).float().mean()) > 0.01, name  # codes that could disagree
        if arch in ("batchtopk", "matryoshka"):  # BatchTopK and Matryoshka: the learned θ is read and used
            assert float(got[f"{name}.threshold"]) > 0 and float(sae.threshold) == float(got[f"{name}.threshold"])
        with torch.no_grad():
            mine = sae.encode(x)
            mine_recon = sae.decode(mine)
        worst[name] = (float((mine - codes).abs().max()), float((mine_recon - recon).abs().max()))
        torch.testing.assert_close(mine, codes, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(mine_recon, recon, atol=1e-4, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    print("max |Δ| (codes, reconstructions):", worst)
    import json

    from mechscope.sae.dictlearn_files import CLASSES, REFUSED

    shipped = json.loads((tmp_path / "shipped.json").read_text())
    assert shipped["trainers"] == shipped["trained"]  # every trainer the package ships was trained and read above
    assert set(shipped["dictionaries"]) <= set(CLASSES) | set(REFUSED), (
        set(shipped["dictionaries"]) - set(CLASSES) - set(REFUSED)
    )
