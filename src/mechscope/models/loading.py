"""Load a causal LM and its tokenizer from a local path or the embedded default, never from a hub."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from mechscope.cache import cache_dir  # noqa: F401  (re-exported: where converted models live)
from mechscope.errors import MechscopeError

# Nothing here may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "smollm2"


class ModelNotFoundError(MechscopeError, FileNotFoundError):
    """A model spec that is neither the embedded model nor a local folder."""


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, and a stable identifier for manifests."""

    model: nn.Module
    tokenizer: Any
    model_id: str
    path: Path | None = None


def load_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load ``spec``: ``"smollm2"`` (embedded SmolLM2-135M-Instruct) or a local Hugging Face directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.lower() in ("smollm2", "smollm2-135m-instruct"):
        from mechscope.models.smollm2 import ensure_converted
        path, model_id = ensure_converted(), "SmolLM2-135M-Instruct"
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model {spec!r} is neither 'smollm2' nor a local directory; mechscope never downloads from a hub "
                "(save the model with save_pretrained and pass its folder)")
        model_id = path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a damaged weights file raises SafetensorError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fix = (f"delete {path} and it is converted again on next use" if model_id == "SmolLM2-135M-Instruct"
               else "pass 'smollm2' or a folder written by save_pretrained")
        raise ModelNotFoundError(f"{path} does not hold a Hugging Face causal LM with its tokenizer ({first}); {fix}") from err
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, model_id, path)
