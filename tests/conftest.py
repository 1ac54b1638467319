"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, saved as a local HF folder,
and the real SmolLM2 (session-scoped; converted once into the cache)."""

from __future__ import annotations




import pytest
import torch






@pytest.fixture(scope="session")
def smollm2():
    from mechscope.models import load_model
    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, smollm2):
    """A 2-layer random LlamaForCausalLM over SmolLM2's vocabulary, saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=smollm2.tokenizer.bos_token_id, eos_token_id=smollm2.tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    smollm2.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from mechscope.models import load_model
    return load_model(str(tiny_lm_dir))


def _zoo(name: str):
    from mechscope.zoo import load_zoo
    return load_zoo(name)  # trains once per machine (cached), on one thread


@pytest.fixture(scope="session")
def zoo_parens():
    """The zoo's balanced-parentheses classifier (mechscope.zoo.ZooModel)."""
    return _zoo("parens")


@pytest.fixture(scope="session")
def zoo_modadd():
    """The zoo's grokked modular-addition model, with checkpoints along training."""
    return _zoo("modadd")


@pytest.fixture(scope="session")
def zoo_induction():
    """The zoo's two-layer attention-only induction model."""
    return _zoo("induction")


@pytest.fixture
def one_thread():
    """Run a test single-threaded (small batched kernels are faster and steadier so), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
