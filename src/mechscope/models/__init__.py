"""Model loading: the embedded SmolLM2 and any local Hugging Face causal-LM directory.

Any ``torch.nn.Module`` works with :mod:`mechscope.sites`; this package only gets weights and a
tokenizer onto the machine without touching a hub.
"""

from mechscope.models.loading import LoadedModel, cache_dir, load_model

__all__ = ["LoadedModel", "cache_dir", "load_model"]
