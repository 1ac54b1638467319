"""Tiny random Hugging Face models of every family in :mod:`mechscope.models.families`, built offline from
transformers' config classes (2 layers, hidden 32, seeded), shared by the tests that run a method on each family.

``build(name)`` → the model in eval mode. Where a family's code reads ``config.head_dim`` it is 16 ≠ hidden/heads
(= 8) on purpose, and every norm's weight is moved away from its initial value, so a head sliced at
hidden/heads or a norm read in the wrong place shows.
"""

from __future__ import annotations

import torch
from torch import nn

# hidden 32, 4 heads: head_dim 16 (≠ hidden/heads = 8) wherever the family's code reads config.head_dim.
COMMON = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
_GQA = dict(intermediate_size=48, num_key_value_heads=2, head_dim=16)
SPECS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _GQA),
    "mistral": ("MistralConfig", "MistralForCausalLM", _GQA),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _GQA),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", _GQA),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _GQA),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", _GQA),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _GQA),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**_GQA, "pad_token_id": 0}),
    "phi": ("PhiConfig", "PhiForCausalLM", {**_GQA, "num_key_value_heads": 4}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_positions=64, bos_token_id=0, eos_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(intermediate_size=48, use_parallel_residual=True)),
    "gpt_neox_sequential": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(intermediate_size=48, use_parallel_residual=False),
    ),
}
"""Family name (``gpt_neox_sequential``: NeoX without the parallel residual) → (config class, model class, extra
config fields)."""


def build(name: str, **overrides) -> nn.Module:
    """A tiny random model of family ``name`` (a key of :data:`SPECS`), seeded, in eval mode; ``overrides`` replace
    config fields (e.g. ``vocab_size``)."""
    import transformers

    cfg_cls, model_cls, extra = SPECS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**COMMON, **extra, **overrides})).eval()
    with torch.no_grad():  # norms away from their initial 1 (Gemma: 0), so a norm read in the wrong place shows
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln_" in pname:
                p.add_(0.3 * torch.randn_like(p))
    return model
