"""Load a causal LM and its tokenizer: an embedded model, a local folder, or a Hugging Face hub id.

A hub id (``org/name``) is read through huggingface_hub's own cache, as a researcher's other tools
read it. By default nothing is downloaded: a cached copy loads offline, and a model that is not in
the cache ends in one line naming the cache and the command that fetches it. ``download=True`` lets
huggingface_hub fetch what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from mechscope.cache import cache_dir  # noqa: F401  (re-exported: where converted models live)
from mechscope.errors import MechscopeError, UsageError
from mechscope.hub import cached_snapshot, is_hub_id

DEFAULT_MODEL = "smollm2"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
"""Names accepted for ``dtype`` (besides a ``torch.dtype`` itself)."""


class ModelNotFoundError(MechscopeError, FileNotFoundError):
    """A model spec that names no embedded model, no local folder and no cached hub model."""


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, and a stable identifier for manifests."""

    model: nn.Module
    tokenizer: Any
    model_id: str
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where inputs must go)."""
        return device_of(self.model)


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s inputs must go: the device of its first parameter (cpu when it has none). A model that
    accelerate dispatched over devices (``hf_device_map``) takes them on the device of its first module, the cpu
    when that module is offloaded (its parameters then sit on the meta device until accelerate's hook loads them)."""
    placed = getattr(model, "hf_device_map", None)
    if placed:
        first = next(iter(placed.values()))
        return torch.device(
            f"cuda:{first}" if isinstance(first, int) else "cpu" if first in ("cpu", "disk", "meta") else first
        )
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device


def dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed ``model`` over several devices or offloaded some of it to disk: ``.to()`` must
    not gather it on one."""
    placed = getattr(model, "hf_device_map", None)
    if not placed:
        return False
    return len(set(map(str, placed.values()))) > 1 or "disk" in placed.values()


def as_model_input(model: nn.Module, x: Any) -> Any:
    """``x`` where ``model`` runs: a tensor moved to its device, and a floating tensor (images, vectors) also cast to
    its dtype (a bf16 model cannot multiply float32 inputs); token ids keep their dtype; anything else as it is."""
    if not isinstance(x, torch.Tensor):
        return x
    p = next(model.parameters(), None)
    if p is None:
        return x
    return x.to(p.device, p.dtype) if x.is_floating_point() else x.to(p.device)


def output_weight(model: nn.Module) -> torch.Tensor | None:
    """[V, d]: the weight of a Hugging Face model's output embedding (``get_output_embeddings()``), one row per
    logit; None for a model without one."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return None if head is None else head.weight


def n_logits(model: nn.Module) -> int:
    """V, the logits per position of a language model: the rows of its output embedding (Hugging Face), else its
    ``cfg.d_vocab_out`` or ``cfg.d_vocab`` (TransformerLens)."""
    W = output_weight(model)
    if W is not None:
        return int(W.shape[0])
    cfg = getattr(model, "cfg", None)
    for name in ("d_vocab_out", "d_vocab"):
        if isinstance(getattr(cfg, name, None), int) and getattr(cfg, name) > 0:
            return int(getattr(cfg, name))
    raise UsageError(
        f"cannot tell how many logits {type(model).__name__} gives per position (no output embedding, no "
        "cfg.d_vocab): give the task's n_classes"
    )


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``dtype`` as a torch dtype (None → float32); a name not in :data:`DTYPES` is refused."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() in DTYPES:
        return DTYPES[str(dtype).lower()]
    raise UsageError(f"`dtype` {dtype!r} is not one of {', '.join(DTYPES)}")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a torch device: None → cpu, ``"auto"`` → cuda when available, else cpu; a device this
    machine does not have is refused."""
    from mechscope.preflight import check_device

    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device, flag="`device`")
    return torch.device(device)


def _source(spec: str) -> str | None:
    """Which source of :func:`load_model` ``spec`` names, without loading it: ``"embedded"``, ``"folder"`` (an
    existing folder), ``"hub"`` (an ``org/name`` id that is no local path), or None."""
    from mechscope.models.embedded import find_embedded

    path = Path(spec).expanduser()
    if find_embedded(spec) is not None:
        return "embedded"
    if path.is_dir():
        return "folder"
    return "hub" if not path.exists() and is_hub_id(spec) else None


def names_language_model(spec: str) -> bool:
    """Whether ``spec`` names what :func:`load_model` reads (an embedded model, an existing folder, or a hub id
    ``org/name``), without loading it; whether a hub id is in the cache is left to :func:`load_model`."""
    return _source(spec) is not None


def _hub_snapshot(repo_id: str, download: bool) -> Path | str:
    """The cached snapshot folder of ``repo_id`` (offline), or the id itself when downloading is allowed."""
    if download:
        return repo_id
    return cached_snapshot(repo_id, ModelNotFoundError, extra=" (or call load_model with download=True)")


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: torch.dtype | str | None = None,
    *,
    device: torch.device | str | None = None,
    download: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load ``spec`` in eval mode with gradients off, on ``device`` (default cpu) in ``dtype`` (default float32).

    ``spec`` is an embedded model (``smollm2``, ``gemma3-270m``: :mod:`mechscope.models.embedded`), a local
    folder written by ``save_pretrained``, or a hub id ``org/name`` read from the Hugging Face cache
    (fetched only when ``download``).

    ``device_map`` (with ``max_memory`` and ``offload_folder``, as transformers takes them) spreads a model too
    large for one device over several, layer by layer, through accelerate: ``"auto"`` fills the GPUs in turn,
    then the cpu, then ``offload_folder`` on disk; a dict names the device of each module. ``device`` is then
    not used: each module runs where the map puts it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechscope.models.embedded import EMBEDDED, ensure_converted, find_embedded

    if isinstance(spec, nn.Module):
        raise UsageError(
            f"`spec` is already a model ({type(spec).__name__}); pass it to the verbs as it is, or to "
            "resolve_model(model, device=…, dtype=…) to move it"
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise UsageError(f"`spec` must be a model name, a folder or a hub id, not a {type(spec).__name__}")
    spec = os.fspath(spec)
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    kind, embedded = _source(spec), find_embedded(spec)
    source: Path | str
    if embedded is not None:
        source, model_id = ensure_converted(embedded), embedded.title
    elif kind == "folder":
        source = Path(spec).expanduser()
        model_id = source.name
    elif kind == "hub":
        source, model_id = _hub_snapshot(spec, download), spec
    elif Path(spec).expanduser().exists():
        raise ModelNotFoundError(f"model {spec!r} is a file; give a folder written by save_pretrained")
    elif spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(
            f"model {spec!r}: no such folder; give a folder written by save_pretrained, an "
            f"embedded model ({', '.join(EMBEDDED)}) or a hub id (org/name)"
        )
    else:
        raise ModelNotFoundError(
            f"model {spec!r} is not an embedded model ({', '.join(EMBEDDED)}), a local folder or a hub id "
            "(org/name); give one of those"
        )
    try:
        placement = (
            {}
            if device_map is None
            else {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
        )
        # annotated as what mechscope uses: transformers' decorated `to` confuses type checkers
        model: nn.Module = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, local_files_only=not download, **placement
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not download)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a damaged weights file raises SafetensorError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fix = (
            f"delete {source} and it is converted again on next use"
            if embedded is not None
            else "give an embedded model, a folder written by save_pretrained or a hub id"
        )
        raise ModelNotFoundError(
            f"{source} does not hold a Hugging Face causal LM with its tokenizer ({first}); {fix}"
        ) from err
    if device_map is None:
        model.to(torch_device)
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, model_id, source if isinstance(source, Path) else None)
