"""``mechscope probe`` end to end on a tiny random Llama and a random TopK SAE (the path, the JSON, the report)."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.cli import main
from mechscope.probing.concepts import ConceptConfig, build_concepts
from mechscope.sae import REGISTRY
from mechscope.sae.io import save_sae


@pytest.fixture(scope="module")
def tiny_sae(tmp_path_factory):
    torch.manual_seed(0)
    sae = REGISTRY["topk"](REGISTRY["topk"].config_cls(d_in=64, latents=96, k=8))
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "topk", metadata={"site": "resid_post.1"})


def test_concepts_are_labelled_by_construction(tiny_tokenizer):
    tok = tiny_tokenizer
    data = {c.name: c for c in build_concepts(tok, ConceptConfig(contexts=16, rows=400, context_length=32))}
    assert set(data) == set(ConceptConfig().concepts)  # the defaults; `language` is asked for by name
    kw = data["keyword"]
    for r in range(len(kw.label)):
        piece = tok.decode(kw.contexts[kw.context[r], kw.position[r]]).strip()
        if kw.label[r] == 1:  # a keyword's token is (part of) a Python keyword
            assert any(
                piece in k
                for k in (
                    "def",
                    "return",
                    "if",
                    "else",
                    "import",
                    "from",
                    "for",
                    "in",
                    "not",
                    "is",
                    "None",
                    "True",
                    "False",
                    "and",
                    "or",
                    "class",
                    "while",
                    "with",
                    "as",
                    "try",
                    "except",
                    "raise",
                    "elif",
                    "lambda",
                    "yield",
                    "pass",
                    "break",
                    "continue",
                    "global",
                    "nonlocal",
                    "del",
                    "assert",
                    "finally",
                    "async",
                    "await",
                )
            ), piece
    fl = data["first_letter"]
    for r in range(len(fl.label)):
        piece = tok.decode(fl.contexts[fl.context[r], fl.position[r]])
        assert piece[0] == " " and piece[1].lower() == fl.classes[fl.label[r]]
    doc = data["code_vs_prose"]
    assert (doc.position == -1).all() and set(doc.label.tolist()) == {0, 1}
    for c in data.values():
        assert c.test.any() and (~c.test).any()
    # deterministic
    again = build_concepts(tok, ConceptConfig(contexts=16, rows=400, context_length=32, concepts=("in_string",)))[0]
    assert torch.equal(again.label, data["in_string"].label) and torch.equal(again.contexts, data["in_string"].contexts)


def test_probe_cli_json_report_and_saved_activations(tiny_tok_lm_dir, tiny_sae, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = [
        "probe", "--model", str(tiny_tok_lm_dir), "--site", "resid_post.1", "--sae", str(tiny_sae),
        "--contexts", "24", "--rows", "300", "--context-length", "32", "--ks", "1", "2", "--min-rows", "2",
        "--words", "120", "--icl-examples", "2", "--min-probe-f1", "0", "--out", str(out), "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    name = result["dictionaries"][0]
    for concept in ConceptConfig().concepts:
        scores = result["concepts"][concept]["scores"]
        assert set(scores) == {name, "activations", "random directions"}
        for source in scores.values():
            for k in ("1", "2"):
                assert 0.0 <= source[k]["accuracy"] <= 1.0
        assert 0.0 <= result["concepts"][concept]["dense"]["accuracy"] <= 1.0
    assert result["absorption"][name]["letters_scored"] >= 1
    assert (out / "probe.json").is_file() and (out / "activations.safetensors").is_file()
    html = (out / "report.html").read_text()
    assert "first-letter absorption" in html and "keyword" in html
    assert "read from" not in captured.err
    # a second run into the same folder reads the activations back and gives the same numbers
    assert main(argv) == 0
    again = capsys.readouterr()
    assert "activations read from" in again.err
    assert json.loads(again.out)["concepts"] == result["concepts"]
    # other data: the saved activations are not used
    assert main([*argv, "--seed", "1"]) == 0
    assert "computing them anew" in capsys.readouterr().err


def test_probe_refuses_a_dictionary_of_another_width(tiny_tok_lm_dir, tmp_path, capsys):
    sae = REGISTRY["topk"](REGISTRY["topk"].config_cls(d_in=32, latents=16, k=2))
    path = save_sae(sae, tmp_path / "narrow")
    rc = main(
        [
            "probe",
            "--model",
            str(tiny_tok_lm_dir),
            "--site",
            "resid_post.1",
            "--sae",
            str(path),
            "--concepts",
            "in_string",
            "--contexts",
            "4",
            "--no-absorption",
        ]
    )
    assert rc == 2
    assert "width 32" in capsys.readouterr().err
