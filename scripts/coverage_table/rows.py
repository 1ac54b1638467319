"""The rows of the coverage table: which models, the small settings every row's runs share, and :class:`Row`,
one model with the outputs of its finished cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tests import helpers_coverage as models

HF_ROWS = {
    "llama": "Llama (SmolLM2)",
    "gpt2": "GPT-2",
    "gpt_neox": "GPT-NeoX (Pythia)",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3",
    "qwen2": "Qwen 2",
    "qwen3": "Qwen 3",
    "mistral": "Mistral",
    "phi3": "Phi-3",
    "olmo2": "OLMo 2",
    "phi": "Phi",
}
"""tests.helpers_families.SPECS name → row label."""
ROWS = {**HF_ROWS, "transformer_lens": "TransformerLens (stub)", "nn_module": "plain nn.Module"}

# One small harvest for every row: the flags of `mechscope harvest` and the fields of HarvestConfig/TextCorpusConfig.
HARVEST = {"tokens": 2048, "val_tokens": 512, "batch_contexts": 8, "shard_contexts": 64}
CORPUS = {"context_length": 32, "max_tokens": 20_000, "val_fraction": 0.3}
TRAIN = ["--latents", "64", "--k", "4", "--steps", "20", "--batch-size", "64", "--warmup-steps", "2", "--no-progress"]
PROMPT = "When Mary and John went to the store, John gave a drink to"


@dataclass
class Row:
    """One model and what its cells share: its folder (Hugging Face rows), the loaded model, and outputs of
    earlier cells (store, SAE)."""

    name: str
    work: Path
    tokenizer: Any
    contexts: Tensor
    """[N, T] token contexts of the small text corpus (the same for every language model)."""
    folder: Path | None = None
    model: nn.Module | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def is_hf(self) -> bool:
        return self.folder is not None

    @property
    def is_lm(self) -> bool:
        return self.name != "nn_module"

    def names(self) -> tuple[str, ...]:
        """How a refusal may name this model: its model_type, class and row label."""
        mt = getattr(getattr(self.model, "config", None), "model_type", None)
        return tuple(n for n in (mt, self.name, type(self.model).__name__, ROWS[self.name]) if n)

    def sites(self) -> dict[str, Any]:
        """Site names for the residual stream after the last block and each MLP's input and output."""
        if self.name == "transformer_lens":
            return {
                "resid": "blocks.1.hook_resid_post",
                "mlp_in": ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"],
                "mlp_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
                "spd": "blocks.1.mlp*",
            }
        if self.name == "nn_module":
            return {"resid": "fc2", "mlp_in": ["fc1:input", "fc2:input"], "mlp_out": ["fc1", "fc2"], "spd": "fc2"}
        return {
            "resid": "resid_post.1",
            "mlp_in": ["mlp_in.0", "mlp_in.1"],
            "mlp_out": ["mlp_out.0", "mlp_out.1"],
            "spd": "*.1.mlp.*",
        }

    def inputs(self, n: int, seed: int = 0) -> Tensor:
        """n inputs the model takes: text contexts, or N(0, 1) vectors for the classifier."""
        if self.is_lm:
            return self.contexts[seed * n : (seed + 1) * n]
        return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        out = model(x)
        return out.logits if hasattr(out, "logits") else out


def text_contexts(tokenizer: Any) -> Tensor:
    from mechscope.data.text import TextCorpusConfig, build_contexts
    from tests.harness import SMALL_TEXT

    return build_contexts(tokenizer, TextCorpusConfig(source=SMALL_TEXT, **CORPUS)).train


def make_row(name: str, work: Path, tokenizer: Any, contexts: Tensor) -> Row:
    """Build (and for Hugging Face families save and reload, as a user would) the row's model."""
    from mechscope.models import load_model

    row = Row(name, work, tokenizer, contexts)
    work.mkdir(parents=True, exist_ok=True)
    if name in HF_ROWS:
        row.folder = models.save(name, work / "model", tokenizer)
        row.model = load_model(str(row.folder)).model
    elif name == "transformer_lens":
        row.model = models.hooked_transformer(len(tokenizer))
    else:
        row.model = models.mlp_classifier()
    return row


def loaded(row: Row) -> Any:
    """The row's model as a :class:`mechscope.models.LoadedModel` (what the Python entry points take)."""
    from mechscope.models import LoadedModel, load_model

    if row.is_hf:
        return load_model(str(row.folder))
    return LoadedModel(row.model, row.tokenizer, row.name)
