"""The GGUF → float32 conversion of the embedded models tolerates a missing ``lm_head.weight`` only
when the config ties it to the embeddings, and the converted copy is digest-checked on every load."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechscope.errors import MechscopeError
from mechscope.models import embedded
from mechscope.models.embedded import SMOLLM2, ModelConversionError, check_conversion


def test_missing_head_is_accepted_only_when_tied():
    check_conversion(["lm_head.weight"], [], tied=True)
    with pytest.raises(ModelConversionError, match=r"tie_word_embeddings=False\): missing \['lm_head.weight'\]"):
        check_conversion(["lm_head.weight"], [], tied=False)
    with pytest.raises(ModelConversionError, match=r"missing \['model.norm.weight'\]"):
        check_conversion(["model.norm.weight", "lm_head.weight"], [], tied=True)
    with pytest.raises(ModelConversionError, match=r"unexpected \['extra'\]"):
        check_conversion([], ["extra"], tied=True)


@pytest.mark.parametrize("tied", [True, False])
def test_conversion_of_a_headless_state_dict(tied, tmp_path, monkeypatch):
    """ensure_converted itself, fed a GGUF model whose state dict has no lm_head: refused unless tied."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    source = LlamaForCausalLM(cfg)

    class Headless:
        config = cfg

        @staticmethod
        def state_dict():
            return {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}

    class Tokenizer:
        def save_pretrained(self, path):
            pass

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "SMOLLM2", dataclasses.replace(SMOLLM2, locate=lambda scratch: tmp_path))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Headless())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Tokenizer())
    if tied:
        out = embedded.ensure_converted(embedded.SMOLLM2)
        plain = LlamaForCausalLM.from_pretrained(out)
        assert torch.equal(plain.lm_head.weight, source.model.embed_tokens.weight)
    else:
        with pytest.raises(MechscopeError, match="lm_head.weight"):
            embedded.ensure_converted(embedded.SMOLLM2)
        assert not (tmp_path / SMOLLM2.cache_name).exists()
