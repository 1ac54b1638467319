"""Sequences longer than a learned position table (GPT-2's) are refused by name (found by the coverage table: `mechscope explain`
on a tiny GPT-2 of 64 learned positions indexed past its position table, an IndexError)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mechscope.errors import UsageError
from mechscope.explain.explainers import HFWriter
from mechscope.models.families import check_positions, position_limit


def _gpt2(n_positions: int) -> GPT2LMHeadModel:
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=n_positions, vocab_size=50)
    return GPT2LMHeadModel(cfg).eval()


def test_the_limit_is_the_configs_and_none_without_one():
    assert position_limit(_gpt2(64)) == 64
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=50,
            max_position_embeddings=128,
        )
    )
    assert position_limit(llama) is None  # rotary: runs on past its trained length, nothing refused
    check_positions(llama, 10**4, "anything")
    assert position_limit(torch.nn.Linear(2, 2)) is None
    check_positions(torch.nn.Linear(2, 2), 10**6, "anything")  # no config, no limit known: nothing refused


def test_a_prompt_past_the_positions_is_refused_naming_what_and_the_limit():
    model = _gpt2(8)
    check_positions(model, 8, "the prompt")
    with pytest.raises(
        UsageError, match=r"the prompt needs 9 positions.*gpt2 model's positions are a learned table of 8"
    ):
        check_positions(model, 9, "the prompt")


class _Tok:
    """The least of a tokenizer HFWriter uses: no chat template, ids 1..n for n words."""

    padding_side = "right"
    pad_token_id = 0
    eos_token_id = 0
    chat_template = None

    def __call__(self, texts, return_tensors, padding, add_special_tokens):
        n = max(len(t.split()) for t in texts)
        return {"input_ids": torch.ones(len(texts), n, dtype=torch.long), "attention_mask": torch.ones(len(texts), n)}

    def batch_decode(self, ids, skip_special_tokens):
        return ["x"] * len(ids)


class _Loaded:
    def __init__(self, model):
        self.model, self.tokenizer = model, _Tok()


def test_the_explainer_refuses_before_generating_past_the_positions():
    writer = HFWriter(_Loaded(_gpt2(8)))
    assert writer.write(["one two"], max_new_tokens=2) == ["x"]
    with pytest.raises(UsageError, match="max_new_tokens"):
        writer.write(["one two three four five six seven"], max_new_tokens=4)
