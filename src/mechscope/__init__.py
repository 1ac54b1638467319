"""mechscope: read a network's activations, decompose them into sparse latents, and test claims
about what the network computes with measurements that can fail.

``import mechscope as ms`` gives the main verbs (a walk-through: docs/quickstart.md)::

    lm = ms.load_model("path/to/your/model")                 # or "smollm2"; a LoadedModel(model, tokenizer, …)
    store = ms.harvest(lm, "resid_post.1", "out/store", tokens=20_000)
    sae = ms.train_sae(store, "resid_post.1", arch="topk", latents=512, k=16, steps=300)
    metrics, splice = ms.evaluate(sae, store, "resid_post.1", lm)

Reading and writing activations: ``load_model``, ``capture``, ``patch``, ``run_to_sites``, ``resolve_sites``,
``harvest``, ``open_store``. Dictionaries: ``train_sae``, ``load_sae``, ``save_sae``, ``evaluate``, ``frontier``,
``report``. Your own data: ``Task`` (``Task.from_texts``, ``Task.next_token``, ``Task.classifier``; what every method
scores a model on) and ``splice`` (a reconstruction spliced in on a task). Mechanisms: ``attribution_graph``, ``circuit_task``, ``find_circuit``, ``scrub``, ``fit_detector``,
``make_detector``, ``estimate_llc``, ``decompose``. Each is imported on first use, so ``import mechscope`` stays
fast (it imports neither torch nor transformers). Four verbs share their name with a part of mechscope
(``harvest``, ``report``, ``scrub``, ``decompose``): ``ms.report`` is the package :mod:`mechscope.report`, and calling
it calls the verb :func:`mechscope.api.report` (``help(ms.api.report)`` documents it).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# verb → "module:attribute" it is; the module is imported the first time the verb is used (PEP 562).
_VERBS: dict[str, str] = {
    "load_model": "mechscope.models.loading:load_model",
    "resolve_model": "mechscope.models.resolve:resolve_model",
    "capture": "mechscope.sites:capture",
    "patch": "mechscope.sites:patch",
    "run_to_sites": "mechscope.sites:run_to_sites",
    "resolve_sites": "mechscope.sites:resolve_sites",
    "harvest": "mechscope.api:harvest",
    "open_store": "mechscope.api:open_store",
    "train_sae": "mechscope.api:train_sae",
    "load_sae": "mechscope.sae.io:load_sae",
    "save_sae": "mechscope.sae.io:save_sae",
    "evaluate": "mechscope.api:evaluate",
    "splice": "mechscope.api:splice",
    "Task": "mechscope.task:Task",
    "frontier": "mechscope.api:frontier",
    "report": "mechscope.api:report",
    "attribution_graph": "mechscope.api:attribution_graph",
    "circuit_task": "mechscope.api:circuit_task",
    "find_circuit": "mechscope.api:find_circuit",
    "scrub": "mechscope.api:scrub",
    "fit_detector": "mechscope.api:fit_detector",
    "make_detector": "mechscope.anomaly.base:make_detector",
    "estimate_llc": "mechscope.api:estimate_llc",
    "decompose": "mechscope.api:decompose",
}

__all__ = ["__version__", *_VERBS]

# Verbs named like a subpackage or module of mechscope: ``ms.report`` *is* the package mechscope.report (so
# ``mechscope.report.build`` keeps working), made callable: calling it calls the verb.
_MODULE_VERBS = {name: f"mechscope.{name}" for name in ("harvest", "report", "scrub", "decompose")}


class _VerbModule(types.ModuleType):
    """A module that can be called: ``mechscope.report(...)`` is ``mechscope.api.report(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__verb__(*args, **kwargs)


def _verb(name: str) -> Any:
    module, attr = _VERBS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _callable_module(name: str) -> types.ModuleType:
    """The submodule ``mechscope.<name>`` (imported if need be), callable as the verb ``name``."""
    mod = importlib.import_module(_MODULE_VERBS[name])
    if not isinstance(mod, _VerbModule):
        import inspect

        fn = _verb(name)
        mod.__class__ = _VerbModule
        mod.__verb__ = fn  # type: ignore[attr-defined]
        mod.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return mod


class _Package(types.ModuleType):
    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in _MODULE_VERBS and not isinstance(value, _VerbModule):
            value = _callable_module(name)  # imported by someone before the verb was first asked for
        return value


def __getattr__(name: str) -> Any:
    if name in _MODULE_VERBS:
        return _callable_module(name)
    if name not in _VERBS:
        import importlib.util

        if not name.startswith("_") and importlib.util.find_spec(f"mechscope.{name}") is not None:
            return importlib.import_module(f"mechscope.{name}")  # a subpackage: ms.sae.REGISTRY, ms.api.train_sae
        raise AttributeError(f"module 'mechscope' has no attribute {name!r}")
    value = _verb(name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


sys.modules[__name__].__class__ = _Package
