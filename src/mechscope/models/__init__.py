"""Model loading (the embedded SmolLM2 and any local Hugging Face causal-LM directory) and the per-family facts.

Any ``torch.nn.Module`` works with :mod:`mechscope.sites`; :mod:`~mechscope.models.loading` only gets weights and
a tokenizer onto the machine without touching a hub, and :mod:`~mechscope.models.families` says where each
supported architecture keeps its blocks, attention, MLP and norms and how wide its heads are.
"""

from mechscope.models.families import FAMILIES, Family, Heads, block_path, family_of, heads
from mechscope.models.loading import LoadedModel, cache_dir, load_model

__all__ = ["FAMILIES", "Family", "Heads", "LoadedModel", "block_path", "cache_dir", "family_of", "heads", "load_model"]
