"""`mechscope report` end to end on real pieces: a tiny random Llama (SmolLM2's tokenizer), a store
harvested from it, and a saved random TopK SAE; the report must come out with every section."""

from __future__ import annotations

import argparse
import re

import torch

from mechscope.cli.report import add_report_arguments, run_report
from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import TopKConfig, TopKSAE, save_sae
from tests.harness import SMALL_TEXT


def test_report_command_on_a_tiny_store(tiny_lm, tiny_lm_dir, tmp_path, capsys):
    corpus = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
    hcfg = HarvestConfig(sites=("resid_post.1",), tokens=2000, val_tokens=400, batch_contexts=4, shard_contexts=8)
    store = harvest(hcfg, corpus, tmp_path / "store", loaded=tiny_lm, progress=False)
    sae = TopKSAE(TopKConfig(d_in=64, latents=96, k=6), generator=torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "sae", metadata={"site": "resid_post.1"})

    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    out = tmp_path / "report.html"
    args = parser.parse_args(
        [
            "--sae",
            str(tmp_path / "sae"),
            "--store",
            str(store.path),
            "--model",
            str(tiny_lm_dir),
            "--out",
            str(out),
            "--top-latents",
            "6",
            "--random-latents",
            "3",
            "--splice-contexts",
            "8",
            "--distribution-directions",
            "2",
            "--distribution-samples",
            "200",
        ]
    )
    assert run_report(args) == 0

    printed = capsys.readouterr().out
    assert re.search(r"loss recovered .* vs zero, .* vs mean, .* vs rock", printed)
    assert "rock" in printed and str(out.resolve()) in printed
    page = out.read_text()
    assert page.count("class='latent'") == 9
    assert "model.layers.1" in page and "Activation distributions" in page and "id='verdict'" in page
    assert "<mark>" in page  # top contexts with the activating token marked
