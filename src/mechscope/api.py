"""The verbs of ``import mechscope as ms`` that are more than a re-export: short signatures over the packages.

Each takes what a researcher has in hand (a model or its folder, a store or its path, an SAE) and the few
settings that matter; every other setting of the underlying config is a keyword argument named as the
config's field (``ms.train_sae(store, site, lr=1e-3, dead_window=0)``), and a name no config has is refused
with the names it takes. Nothing here computes anything itself: each verb builds the configs and calls the
package function named in its docstring.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.errors import UsageError

if TYPE_CHECKING:  # only for the annotations: importing them here would make `import mechscope` slow
    from torch import Tensor, nn

    from mechscope.anomaly.base import Detector
    from mechscope.circuits.tasks import CircuitTask
    from mechscope.coding.frontier import FrontierResult
    from mechscope.evals.splice import SpliceResult
    from mechscope.graph.build import GraphResult
    from mechscope.models.loading import LoadedModel
    from mechscope.report.build import ReportOutcome
    from mechscope.sae.base import SparseAutoencoder
    from mechscope.scrub.engine import ScrubResult
    from mechscope.slt.estimator import LLCResult
    from mechscope.store import ActivationStore
    from mechscope.task import Task

PathLike = str | os.PathLike


def configs(settings: dict[str, Any], *classes: type, **fixed: Any) -> list[Any]:
    """One instance of each config class, built from ``settings`` (each keyword goes to every class that has a field
    of that name) and ``fixed`` (given to the classes that have the field). A keyword no class has is refused."""
    fields = [{f.name for f in dataclasses.fields(c)} for c in classes]
    unknown = sorted(set(settings) - set().union(*fields))
    if unknown:
        raise UsageError(
            f"unknown setting(s) {', '.join(unknown)}; this verb takes {', '.join(sorted(set().union(*fields)))}"
        )
    merged = {**settings, **fixed}
    return [c(**{k: v for k, v in merged.items() if k in names}) for c, names in zip(classes, fields)]


Device = str | None
"""``device``: cpu, cuda, cuda:N or auto; None leaves a model passed in where it is (a spec loads on the cpu)."""
Dtype = str | None
"""``dtype``: float32, bfloat16 or float16 (bf16, fp16); None leaves a model passed in as it is (a spec loads float32)."""


def _run_on(device: Device, dtype: Dtype) -> None:
    """Refuse a bad ``device`` or ``dtype`` before anything loads (the error names the parameter)."""
    from mechscope.models.resolve import RunOn

    RunOn(device or "cpu", dtype or "float32")


def _lm(model: LoadedModel | PathLike, device: Device = None, dtype: Dtype = None) -> LoadedModel:
    """A loaded language model: ``model`` itself (moved to ``device`` / ``dtype`` when given), or the one a spec or
    folder resolves to (:func:`mechscope.models.resolve.language_model`)."""
    from mechscope.models.resolve import language_model

    return language_model(model if hasattr(model, "tokenizer") else os.fspath(model), device=device, dtype=dtype)


def _module(model: Any, device: Device = None, dtype: Dtype = None) -> nn.Module:
    """The module of ``model`` (a :class:`~mechscope.models.LoadedModel`, a module, or a spec), on ``device`` in
    ``dtype`` when given (:func:`mechscope.models.resolve.resolve_model`)."""
    from mechscope.models.resolve import resolve_model

    subject = resolve_model(
        os.fspath(model) if isinstance(model, (str, os.PathLike)) else model, device=device, dtype=dtype
    )
    if subject.model is None:
        raise UsageError(f"`model` {subject.spec!r} is built by the command that uses it (decompose); pass a module")
    return subject.model


def _store(store: ActivationStore | PathLike) -> ActivationStore:
    from mechscope.store import ActivationStore

    return store if isinstance(store, ActivationStore) else ActivationStore(store)


def open_store(path: PathLike) -> ActivationStore:
    """The activation store in folder ``path`` (:class:`mechscope.store.ActivationStore`; shards checked as they are read)."""
    return _store(path)


def harvest(
    model: LoadedModel | PathLike,
    sites: str | Sequence[str],
    out: PathLike,
    *,
    tokens: int = 100_000,
    val_tokens: int = 8_192,
    source: str = "stdlib",
    context_length: int = 128,
    progress: bool = True,
    device: Device = None,
    model_dtype: Dtype = None,
    **settings: Any,
) -> ActivationStore:
    """Read ``model``'s activations at ``sites`` over a text corpus into the store ``out`` (resumes if it exists).

    ``model``: a :class:`~mechscope.models.LoadedModel`, ``"smollm2"`` or a Hugging Face model folder.
    ``source``: ``"stdlib"`` (the Python standard library's docstrings), a text file, glob or folder. ``device`` and
    ``model_dtype``: where and in which dtype the model runs (``dtype`` is the store's, a setting). Other settings:
    the fields of :class:`~mechscope.harvest.HarvestConfig` and :class:`~mechscope.data.TextCorpusConfig`.
    Calls :func:`mechscope.harvest.harvest`; returns the store."""
    from mechscope.data.text import TextCorpusConfig
    from mechscope.harvest import HarvestConfig, harvest as run

    lm = _lm(model, device, model_dtype)
    names = (sites,) if isinstance(sites, str) else tuple(sites)
    cfg, corpus = configs(
        settings,
        HarvestConfig,
        TextCorpusConfig,
        model=lm.model_id,
        sites=names,
        tokens=tokens,
        val_tokens=val_tokens,
        source=source,
        context_length=context_length,
    )
    return run(cfg, corpus, out, loaded=lm, progress=progress)


def train_sae(
    store: ActivationStore | PathLike,
    site: str | Sequence[str],
    arch: str = "topk",
    *,
    latents: int = 4096,
    k: int | None = 32,
    steps: int = 2000,
    batch_size: int = 4096,
    lr: float = 2e-4,
    target_site: str | None = None,
    out: PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    **settings: Any,
) -> SparseAutoencoder:
    """Train one SAE of architecture ``arch`` (a name in :data:`mechscope.sae.REGISTRY`) on ``store``'s rows at
    ``site`` and return it, loaded from where it was saved (eval mode, input scale folded in).

    ``target_site``: transcoders read ``site`` and predict it. Several sites (a crosscoder, a cross-layer
    transcoder) are a list. ``k`` goes to architectures that have it. ``out``: the folder the run resumes from
    and saves to (checkpoint, ``train_log.jsonl``, ``<arch>/`` with ``eval.json``); None trains in a temporary
    folder. Other settings: the fields of the architecture's config, :class:`~mechscope.sae.OptimConfig` and
    :class:`~mechscope.sae.TrainConfig`. Calls :func:`mechscope.sae.train_from_store` with one member."""
    from mechscope.sae import REGISTRY, Member, OptimConfig, TrainConfig, load_sae, train_from_store
    from mechscope.sae.from_store import site_widths

    if arch not in REGISTRY:
        raise UsageError(f"unknown `arch` {arch!r}; choose one of {', '.join(sorted(REGISTRY))}")
    st = _store(store)
    site = site if isinstance(site, str) else tuple(site)
    target = target_site if target_site is None or isinstance(target_site, str) else tuple(target_site)
    cls = REGISTRY[arch].config_cls
    fixed = {"latents": latents, **site_widths(st, cls, site, target)}
    if k is not None and "k" in {f.name for f in dataclasses.fields(cls)}:
        fixed["k"] = k
    sae_cfg, optim, train = configs(
        settings,
        cls,
        OptimConfig,
        TrainConfig,
        lr=lr,
        steps=steps,
        batch_size=batch_size,
        device=device,
        progress=progress,
        **fixed,
    )
    with tempfile.TemporaryDirectory(prefix="mechscope-sae-") if out is None else nullcontext(out) as folder:
        train_from_store(
            st,
            site,
            [Member(sae_cfg, optim, name=arch)],
            train,
            os.fspath(folder),
            target_site=target,
            metadata={"command": "mechscope.train_sae"},
        )
        return load_sae(Path(folder) / arch)


def evaluate(
    sae: SparseAutoencoder,
    store: ActivationStore | PathLike,
    site: str,
    model: LoadedModel | PathLike,
    *,
    target_site: str | None = None,
    rows: int = 65_536,
    contexts: int = 64,
    mean_rows: int = 65_536,
    device: Device = None,
    dtype: Dtype = None,
) -> tuple[dict[str, float], SpliceResult]:
    """``sae`` on ``store``'s held-out rows at ``site``: (reconstruction metrics — fvu, l0, dead_fraction, … —, the
    splice into ``model``: clean, spliced, zero-, mean-ablated and rock losses, loss recovered vs each, a verdict).
    Transcoders: ``target_site`` is the site their prediction replaces. ``device`` / ``dtype``: where and in which
    dtype ``model`` runs (the losses are accumulated in float64 whatever the dtype); ``sae`` is moved (in place) to the
    model's device, where its rows are encoded and the splice runs. Calls
    :func:`mechscope.evals.evaluate.evaluate_sae`."""
    from mechscope.evals.evaluate import EvaluateConfig, evaluate_sae

    cfg = EvaluateConfig(rows=rows, contexts=contexts, mean_rows=mean_rows)
    lm = _lm(model, device, dtype)
    return evaluate_sae(sae, _store(store), site, lm, cfg, target_site=target_site)


def splice(
    model: Any,
    site: str,
    reconstruct: Any,
    task: Task,
    *,
    mean_act: Tensor | None = None,
    device: Device = None,
    dtype: Dtype = None,
    **settings: Any,
) -> SpliceResult:
    """``reconstruct`` (x [rows, d] → x̂) spliced into ``model`` (a :class:`~mechscope.models.LoadedModel`, a module or
    a spec) at ``site`` on ``task``'s held-out split (a :class:`~mechscope.task.Task`, e.g. ``Task.from_texts(texts,
    tokenizer)``): clean, spliced, zero- and mean-ablated losses beside the rock fit on the task's training targets.
    ``mean_act`` [d]: the mean for mean-ablation (default: over the task's training split). Settings: the fields of
    :class:`~mechscope.evals.splice.SpliceConfig` (batch_size, max_examples, skip_first_positions, progress, …).
    Calls :func:`mechscope.evals.splice.evaluate_splice`; ``result.summary_lines()`` says it in words."""
    from mechscope.evals.splice import SpliceConfig, evaluate_splice

    (cfg,) = configs(settings, SpliceConfig)
    return evaluate_splice(_module(model, device, dtype), site, reconstruct, task, mean_act=mean_act, cfg=cfg)


def frontier(
    sae: SparseAutoencoder,
    store: ActivationStore | PathLike,
    site: str,
    model: LoadedModel | PathLike | None = None,
    *,
    l0s: Sequence[int] = (8, 16, 32, 64, 128),
    out: PathLike | None = None,
    loss_contexts: int = 16,
    device: str = "cpu",
    dtype: Dtype = None,
    **settings: Any,
) -> FrontierResult:
    """The SAE's encoder and the pursuit coders (MP, OMP, gradient pursuit, …) on the same dictionary along an L0
    sweep, on ``store``'s held-out rows at ``site``; with ``model``, each reconstruction spliced in for loss and loss
    recovered. ``out``: also write ``frontier.json`` and the plots there. ``device``: where the coders and ``model``
    run; ``dtype``: ``model``'s. Other settings: the fields of
    :class:`~mechscope.coding.frontier.FrontierConfig` and :class:`~mechscope.coding.CodingConfig`.
    Calls :func:`mechscope.coding.from_store.frontier_from_store`."""
    import json

    from mechscope.atomic import atomic_write_bytes
    from mechscope.coding.base import CodingConfig
    from mechscope.coding.from_store import frontier_from_store
    from mechscope.coding.frontier import FrontierConfig

    cfg, coding = configs(settings, FrontierConfig, CodingConfig, l0s=tuple(l0s))
    _run_on(device, dtype)
    lm = None if model is None else _lm(model, device, dtype)
    result = frontier_from_store(sae, _store(store), site, cfg, coding, lm, loss_contexts, device)
    if out is not None:
        from mechscope.coding.plots import save_frontier_plots

        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(out) / "frontier.json", json.dumps(result.to_dict(), indent=1, default=float).encode())
        save_frontier_plots(result, Path(out))
    return result


def report(
    sae: SparseAutoencoder,
    store: ActivationStore | PathLike,
    site: str,
    model: LoadedModel | PathLike,
    out: PathLike = "report.html",
    device: Device = None,
    dtype: Dtype = None,
    **settings: Any,
) -> ReportOutcome:
    """Write one self-contained HTML report of ``sae`` at ``site``: metrics beside the baselines, plots, the
    distribution fits and a dashboard per latent; ``model`` runs on ``device`` in ``dtype``. Settings: the fields of :class:`~mechscope.report.ReportConfig`.
    Calls :func:`mechscope.report.from_store.report_from_store`; the outcome's ``path`` is the file."""
    from mechscope.report.build import ReportConfig
    from mechscope.report.from_store import report_from_store

    (cfg,) = configs(settings, ReportConfig)
    return report_from_store(os.fspath(out), sae, _store(store), site, _lm(model, device, dtype), cfg)


def attribution_graph(
    model: LoadedModel | PathLike,
    prompt: str | Tensor,
    transcoders: PathLike | list,
    progress: bool = False,
    device: Device = None,
    dtype: Dtype = None,
    **settings: Any,
) -> GraphResult:
    """The attribution graph of one prompt over the replacement model in which a transcoder replaces every MLP.

    ``transcoders``: a folder holding one trained transcoder per MLP (``mlp_in.L`` → ``mlp_out.L``, as
    ``train_sae(..., arch="transcoder", target_site=...)`` saves them) or a list of
    :class:`~mechscope.graph.replacement.LayerTranscoder`. ``prompt``: text, or token ids [T]. ``device`` / ``dtype``:
    where and in which dtype the model and its transcoders run (below float32 the exactness check fails). Settings: the
    fields of :class:`~mechscope.graph.config.GraphConfig`. Calls :func:`mechscope.graph.build.build_graph`;
    ``result.summary()`` has the scores, the exactness check and the losses (the rock is n/a here)."""
    import torch

    from mechscope.graph.build import build_graph, prompt_ids
    from mechscope.graph.config import GraphConfig
    from mechscope.graph.replacement import find_transcoders

    lm = _lm(model, device, dtype)
    (cfg,) = configs(settings, GraphConfig)
    tcs = transcoders if isinstance(transcoders, list) else find_transcoders(lm.model, os.fspath(transcoders))
    p = next(lm.model.parameters())
    for tc in tcs:  # the transcoders run beside the model
        tc.sae.to(p.device, p.dtype)
    ids = (prompt_ids(lm.tokenizer, prompt, cfg.bos) if isinstance(prompt, str) else prompt).to(p.device)
    with torch.enable_grad():
        return build_graph(
            lm.model,
            ids,
            tcs,
            cfg,
            decode=lambda t: lm.tokenizer.decode([t]),
            bos_id=getattr(lm.tokenizer, "bos_token_id", None),
            progress=progress,
        )


def circuit_task(
    name: str,
    model: PathLike | None = None,
    examples: int = 200,
    seed: int = 1,
    device: Device = None,
    dtype: Dtype = None,
) -> tuple[nn.Module, CircuitTask]:
    """(model, task) of a circuit task in :data:`mechscope.circuits.tasks.TASKS`: ``induction`` and ``parens`` on their
    zoo models, ``ioi`` (indirect object identification) on ``model`` (``"smollm2"`` or a Hugging Face folder); the
    model on ``device`` in ``dtype``, the task's inputs beside it."""
    from mechscope.circuits.tasks import TASKS

    if name not in TASKS:
        raise UsageError(f"unknown circuit task {name!r}; choose one of {', '.join(TASKS)}")
    _run_on(device, dtype)
    if name == "ioi":
        return TASKS[name](examples, seed=seed, model=os.fspath(model or "smollm2"), device=device, dtype=dtype)
    return TASKS[name](examples, seed=seed, device=device, dtype=dtype)


def find_circuit(
    model: nn.Module,
    task: CircuitTask,
    method: str = "atp",
    top: int = 10,
    device: Device = None,
    dtype: Dtype = None,
    **settings: Any,
) -> dict[str, Any]:
    """The circuit of ``task`` in ``model`` by ``method`` (exact | atp | atp* | eap | eap-ig | acdc), its scores
    checked against a budget of exact patches, and its faithfulness beside the full model, the empty circuit and
    the rock; ``device`` / ``dtype`` move ``model`` (in place) and the task's inputs follow it. Settings: the fields of
    :class:`~mechscope.circuits.discover.DiscoverConfig`. Calls
    :func:`mechscope.circuits.discover.discover`; returns its JSON-ready dict (``nodes``, ``edges``,
    ``faithfulness``, ``agreement_with_exact``, ``scores``, ``cost``)."""
    from mechscope.circuits.discover import DiscoverConfig, discover

    (cfg,) = configs(settings, DiscoverConfig, method=method, top=top)
    module = _module(model, device, dtype)
    return discover(module, task.to(next(module.parameters()).device), cfg)


def scrub(
    model: PathLike | None,
    hypothesis: Any,
    examples: int | None = None,
    seeds: int | None = None,
    progress: bool = False,
    device: Device = None,
    dtype: Dtype = None,
) -> ScrubResult:
    """Causal scrubbing of ``hypothesis`` (a YAML file, a dict in the same format, or a
    :class:`~mechscope.scrub.Hypothesis`) on ``model`` (``zoo:NAME``, ``smollm2``, a Hugging Face folder, or None:
    the one the hypothesis names), on ``device`` in ``dtype``. Calls :func:`mechscope.scrub.scrub`;
    ``result.verdict()`` says it in words."""
    from mechscope.scrub import Hypothesis, hypothesis_from_dict, load_hypothesis, scrub as run

    if isinstance(hypothesis, dict):
        hypothesis = hypothesis_from_dict(hypothesis)
    elif not isinstance(hypothesis, Hypothesis):
        hypothesis = load_hypothesis(hypothesis)
    _run_on(device, dtype)
    return run(
        None if model is None else os.fspath(model), hypothesis, examples, seeds, progress, device=device, dtype=dtype
    )


def fit_detector(
    name: str,
    model: nn.Module,
    trusted: Any,
    sites: Any,
    *,
    anomalous: Any = None,
    device: Device = None,
    dtype: Dtype = None,
    **config: Any,
) -> Detector:
    """A detector of kind ``name`` (:data:`mechscope.anomaly.REGISTRY`: mahalanobis, que, spectral, lof, knn, sae,
    distill, probe) fitted on ``trusted`` inputs at ``sites`` of ``model``; ``det.score(inputs)`` is float64 [N],
    higher = more anomalous; ``device`` / ``dtype`` move ``model`` (in place), the inputs follow it and activations are
    read in float64. ``config``: the detector's settings. Calls :func:`mechscope.anomaly.make_detector`
    and :meth:`~mechscope.anomaly.Detector.fit`."""
    from mechscope.anomaly import make_detector

    module = _module(model, device, dtype)
    return make_detector(name, **config).fit(module, trusted, sites, anomalous=anomalous)


def estimate_llc(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    progress: bool = True,
    device: Device = None,
    dtype: Dtype = None,
    **settings: Any,
) -> LLCResult:
    """The local learning coefficient λ̂ of ``model`` at its current weights by SGLD chains, with diagnostics.

    ``loss_fn(model, batch) -> scalar``; ``data`` a tuple of tensors [n, …] (or a DataLoader). ``device`` moves
    ``model`` (in place) and a tuple ``data``; ``dtype`` must be float32 (SGLD's steps are below bf16's resolution).
    Settings: the fields of
    :class:`~mechscope.slt.LLCConfig` (epsilon, gamma, chains, draws, …). Calls :func:`mechscope.slt.estimate_llc`;
    ``result.headline()`` prints λ̂ ± its standard error."""
    from mechscope.models.resolve import RunOn
    from mechscope.slt import LLCConfig, estimate_llc as run

    RunOn(device or "cpu", dtype or "float32").limited_to(
        "estimate_llc", "SGLD steps of size ~ε are lost to its rounding"
    )
    (cfg,) = configs(settings, LLCConfig)
    module = _module(model, device, dtype)
    if device is not None and isinstance(data, tuple):
        data = tuple(x.to(next(module.parameters()).device) for x in data)
    return run(module, loss_fn, data, cfg, progress=progress)


def decompose(
    model: PathLike,
    out: PathLike | None = None,
    progress: bool = True,
    device: Device = None,
    dtype: Dtype = None,
    **settings: Any,
) -> dict[str, Any]:
    """Stochastic parameter decomposition of ``model``: ``toy:tms``, ``toy:resid-mlp``, ``zoo:modadd`` (their true
    mechanisms are known) or a Hugging Face model folder (choose its Linear layers with ``targets``). ``out``: the
    folder training resumes from and checkpoints to. ``device``: where the model, its batches and the subcomponents
    run (None: cpu); ``dtype``: float32 only, anything else is refused (:data:`mechscope.decompose.run.DTYPE_REFUSAL`).
    Settings: the fields of
    :class:`~mechscope.decompose.SPDConfig` and :class:`~mechscope.decompose.toys.TargetConfig`. Calls
    :func:`mechscope.decompose.run.decompose`; returns its result (``alive``, ``alive_per_target``, ``mmcs`` and
    ``true_mechanisms`` where the truth is known) with the trained :class:`~mechscope.decompose.SPD` under ``"spd"``."""
    from mechscope.decompose.config import SPDConfig
    from mechscope.decompose.run import DTYPE_REFUSAL, decompose as run
    from mechscope.decompose.targets import SPD_DEFAULTS, build_target
    from mechscope.decompose.toys import TargetConfig
    from mechscope.models.resolve import RunOn

    run_on = RunOn(device or "cpu", dtype or "float32").limited_to("decompose", DTYPE_REFUSAL)
    spec = os.fspath(model)
    settings = {**SPD_DEFAULTS.get(spec, {}), **settings}
    cfg, _ = configs(settings, SPDConfig, TargetConfig)  # checks every name against both configs
    (tcfg,) = configs(
        {k: v for k, v in settings.items() if k not in _fields(SPDConfig)},
        TargetConfig,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )  # the toy model's data follows SPD's batches and seed
    kt = build_target(spec, tcfg).to(run_on.torch_device)
    res, spd, _log, _live = run(kt, cfg, None if out is None else Path(out), progress)
    return {**res, "spd": spd}


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
