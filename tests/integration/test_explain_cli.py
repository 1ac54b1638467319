"""``mechscope explain`` end to end on a planted dictionary saved in mechscope's layout, a store built by hand and a
stub chat endpoint on 127.0.0.1: explanations.json lands next to the dictionary, ``--json`` prints one object, and
the HTML report's latent cards show the explanations."""

from __future__ import annotations

import json

import pytest

from mechscope.cli import main
from mechscope.sae.io import save_sae
from tests.helpers_explain import Stub, planted_sae, planted_store


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def test_explain_command_with_a_stub_endpoint(tmp_path, stub, tiny_tok_lm_dir, capsys):
    store, _, _ = planted_store(tmp_path / "store")
    sae_dir = tmp_path / "sae"
    save_sae(planted_sae(), sae_dir, metadata={"site": "resid_post.0"})
    argv = [
        "explain",
        "--sae", str(sae_dir),
        "--store", str(store.path),
        "--model", str(tiny_tok_lm_dir),
        "--explainer", "endpoint",
        "--endpoint", stub.url + "/v1",
        "--endpoint-model", "stub",
        "--count", "5",
        "--batch-latents", "2",
        "--top", "3",
        "--no-score",
        "--no-progress",
        "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["planned"] == out["done"] == out["explained_now"] == 5 and out["scored"] == 0
    saved = json.loads((sae_dir / "explanations.json").read_text())
    assert saved["complete"] and saved["settings"]["site"] == "resid_post.0"
    assert len(stub.seen) == 5
    for r in saved["results"]:  # the stub answers "about <prompt>": the kept sentence starts so
        assert r["explanation"].startswith("about A feature of a language model fires on the tokens marked")
    body = stub.seen[0][2]
    assert body["model"] == "stub" and "<<" in body["messages"][0]["content"]
    # the same command again has nothing left to do and sends nothing
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["explained_now"] == 0 and len(stub.seen) == 5


def test_explain_refuses_a_missing_endpoint_url_before_loading(tmp_path, capsys):
    argv = ["explain", "--sae", str(tmp_path / "none"), "--store", str(tmp_path), "--explainer", "endpoint"]
    assert main(argv) == 2
    assert "--endpoint" in capsys.readouterr().err


def test_explain_scores_with_the_endpoint_as_judge(tmp_path, stub, tiny_tok_lm_dir, capsys):
    """Scoring on: the endpoint judges (its logprobs), each result carries the true, random and constant
    explanations' AUROC with intervals, and --json carries the scorers' summary."""
    store, _, _ = planted_store(tmp_path / "store")
    sae_dir = tmp_path / "sae"
    save_sae(planted_sae(), sae_dir, metadata={"site": "resid_post.0"})
    argv = [
        "explain",
        "--sae", str(sae_dir),
        "--store", str(store.path),
        "--model", str(tiny_tok_lm_dir),
        "--explainer", "endpoint",
        "--endpoint", stub.url,
        "--endpoint-model", "stub",
        "--count", "3",
        "--top", "4",
        "--negatives", "6",
        "--scorers", "detection",
        "--n-boot", "20",
        "--no-progress",
        "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scored"] == 3 and "detection" in json.dumps(out["scores"])
    saved = json.loads((sae_dir / "explanations.json").read_text())
    for r in saved["results"]:
        det = r["scores"]["scores"]["detection"]
        assert {"true", "random", "constant"} <= set(det) and isinstance(r["beats_random"], bool)
        assert 0.0 <= det["true"]["auroc"] <= 1.0
    assert any(b.get("logprobs") for _, _, b in stub.seen)  # the judge's requests went to the endpoint
