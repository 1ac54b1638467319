"""One resolver for every model spec, and where a model runs.

Every command and API verb that runs a model turns what it was given into a :class:`Subject` here, and
nowhere else parses a spec:

=================================  ========  ==============================================================
given                              kind      what the subject holds
=================================  ========  ==============================================================
``zoo:NAME``                       zoo       the zoo model (trained once, then cached) and its task
``toy:NAME``                       toy       the name only: the command builds the toy model from its settings
``smollm2``, a folder, ``org/id``  lm        a Hugging Face causal LM and its tokenizer (:func:`load_model`)
a :class:`LoadedModel`             lm        itself
any ``nn.Module`` (TransformerLens  module   the module itself
``HookedTransformer`` included)
=================================  ========  ==============================================================

:class:`RunOn` is where and in which dtype: the ``device`` and ``dtype`` every such command takes. Reported
numbers are accumulated in float32 (float64 where a metric already is) whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mechscope.errors import UsageError
from mechscope.models.loading import (
    LoadedModel,
    device_of,
    dispatched,
    load_model,
    resolve_device,
    resolve_dtype,
)

Kind = Literal["lm", "zoo", "toy", "module"]


@dataclass(frozen=True)
class RunOn:
    """Where a model runs and in which dtype; checked when built, before any model loads."""

    device: str = "cpu"
    """cpu, cuda, cuda:N or auto (cuda when available, else cpu). CUDA has not been run on a GPU in this project yet."""
    dtype: str = "float32"
    """The model's dtype: float32, bfloat16 or float16 (bf16, fp16); numbers are still accumulated in float32."""

    def __post_init__(self) -> None:
        resolve_device(self.device)
        resolve_dtype(self.dtype)

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    def limited_to(self, what: str, why: str) -> RunOn:
        """Itself, after refusing for ``what`` a dtype other than float32, ``why`` saying the reason: a method that
        cannot run in a dtype is refused by name, never run on a guess."""
        if self.torch_dtype != torch.float32:
            raise UsageError(f"`dtype` {self.dtype}: {what} runs in float32 only ({why}); drop `dtype`")
        return self


@dataclass
class Subject:
    """What a command runs: the model, and what its kind brings with it."""

    kind: Kind
    """lm | zoo | toy | module (the table in this module's docstring)."""
    spec: str
    """The spec as given (``zoo:parens``, a folder), or the class name of a module passed in."""
    model: nn.Module | None
    """The model in eval mode on its device (None for a toy: the command builds it)."""
    tokenizer: Any = None
    """kind lm: the tokenizer."""
    zoo: Any = None
    """kind zoo: the :class:`~mechscope.zoo.ZooModel` (its task, recipe and metrics)."""
    loaded: LoadedModel | None = None
    """kind lm: the :class:`LoadedModel` (model, tokenizer, model_id)."""

    @property
    def name(self) -> str:
        """The name after ``zoo:`` / ``toy:`` (the spec itself otherwise)."""
        return self.spec.split(":", 1)[1] if self.kind in ("zoo", "toy") else self.spec

    @property
    def device(self) -> torch.device:
        """Where inputs must go: the device of the model's first parameter (cpu when it has none)."""
        return torch.device("cpu") if self.model is None else device_of(self.model)


def spec_kind(spec: str, check: bool = True) -> Kind:
    """The kind of ``spec`` without loading anything; with ``check`` an unknown ``zoo:NAME`` is refused naming the zoo's
    models (a caller with its own, narrower list of models checks itself). A ``toy:NAME`` is checked by the command
    that builds it: each knows its own toys."""
    if spec.startswith("zoo:") and check:
        from mechscope.zoo import ZOO

        if spec[4:] not in ZOO:
            raise UsageError(
                f"`model` {spec!r}: unknown zoo model; choose one of {', '.join('zoo:' + n for n in sorted(ZOO))}"
            )
        return "zoo"
    return "zoo" if spec.startswith("zoo:") else "toy" if spec.startswith("toy:") else "lm"


def resolve_model(
    spec_or_module: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    download: bool = False,
    device_map: str | dict[str, Any] | None = None,
) -> Subject:
    """``spec_or_module`` as a :class:`Subject` on ``device`` in ``dtype``.

    A spec loads on ``device`` (None: cpu) in ``dtype`` (None: float32). A model passed in Python (a module or a
    :class:`LoadedModel`) is used as it is unless ``device`` / ``dtype`` are given, then moved in place
    (``nn.Module.to``), except a model that accelerate spread over devices, which stays where it is. ``device_map``
    (an HF spec only): spread the model over the devices by accelerate (:func:`load_model`). ``download``: a hub id not in the cache is fetched (:func:`load_model`). A bad ``device`` or
    ``dtype`` is refused first, before anything loads or trains."""
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if isinstance(spec_or_module, LoadedModel) or (
        hasattr(spec_or_module, "model") and hasattr(spec_or_module, "tokenizer")
    ):
        _move(spec_or_module.model, device, dtype)
        return Subject(
            "lm", spec_or_module.model_id, spec_or_module.model, spec_or_module.tokenizer, loaded=spec_or_module
        )
    if isinstance(spec_or_module, nn.Module):
        return Subject("module", type(spec_or_module).__name__, _move(spec_or_module, device, dtype))
    spec = str(spec_or_module)
    kind = spec_kind(spec)
    if kind == "toy":
        return Subject("toy", spec, None)
    if kind == "zoo":
        from mechscope.zoo import load_zoo

        zm = load_zoo(spec[4:])
        return Subject("zoo", spec, zm.model.to(torch_device, torch_dtype).eval(), zoo=zm)
    lm = load_model(spec, dtype, device=device, download=download, device_map=device_map)
    return Subject("lm", spec, lm.model, lm.tokenizer, loaded=lm)


def _move(model: nn.Module, device: torch.device | str | None, dtype: torch.dtype | str | None) -> nn.Module:
    if dispatched(model):  # spread over devices by accelerate: .to() would gather it on one, which device_map avoids
        if dtype is not None and resolve_dtype(dtype) != next(model.parameters()).dtype:
            raise UsageError(
                f"the model was spread over devices by accelerate (`device_map`) in "
                f"{next(model.parameters()).dtype}; it cannot be cast to `dtype` {dtype}: load it in that dtype"
            )
        return model
    if device is not None:
        model.to(resolve_device(device))
    if dtype is not None:
        model.to(resolve_dtype(dtype))
    return model


def language_model(
    spec_or_model: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    download: bool = False,
) -> LoadedModel:
    """The Hugging Face causal LM with its tokenizer that ``spec_or_model`` resolves to (:func:`resolve_model`);
    a zoo, toy or bare module is refused: the caller reads text."""
    subject = resolve_model(spec_or_model, device=device, dtype=dtype, download=download)
    if subject.loaded is None:
        raise UsageError(
            f"`model` {subject.spec!r} is a {subject.kind} model; this needs a Hugging Face causal LM with its "
            "tokenizer (smollm2, a folder written by save_pretrained or a hub id)"
        )
    return subject.loaded
