"""The embedded SmolLM2: loads offline, predicts sensibly, and its residual stream matches our sites."""

from __future__ import annotations

import torch

from mechscope.sites import capture, run_to_sites


def test_smollm2_loads_and_predicts(smollm2):
    tok = smollm2.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok("The capital of France is").input_ids])
    with torch.no_grad():
        logits = smollm2.model(ids).logits
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_smollm2_resid_capture_and_stop_after(smollm2):
    ids = torch.tensor([[1] + smollm2.tokenizer("Sites are named places in a model.").input_ids])
    with torch.no_grad(), capture(smollm2.model, "resid_post.6") as acts:
        out = smollm2.model(ids, output_hidden_states=True)
    assert torch.equal(acts["model.layers.6"], out.hidden_states[7])
    assert torch.equal(run_to_sites(smollm2.model, "resid_post.6", ids)["model.layers.6"], out.hidden_states[7])
