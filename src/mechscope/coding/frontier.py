"""The sparsity frontier: every coder and the SAE encoder on the same dictionary, along an L0 sweep.

Shapes: B rows, d width, n latents.

For each target L0 k in the sweep and each coder (see :data:`mechscope.coding.registry.CODERS`),
the evaluation rows are coded with k slots and we record, per (coder, k):

- the reconstruction metrics of :class:`mechscope.evals.metrics.ReconstructionStats` (FVU, the
  *achieved* L0, cosine, norm ratio, …) — a coder may use fewer than k latents (tolerance, clipping);
- the support Jaccard with the encoder's code at the same k, and the mean span cosine of the newly
  chosen latents (both defined in :mod:`mechscope.coding.measures`);
- with a ``loss_fn``, whatever it returns for the reconstruction spliced into the model.

The encoder at target L0 k is the ``encoder`` callable's code cut to its k largest activations.
Decision for SAEs whose sparsity cannot be set (TopK, or any whose L0 is what it is): by default
the callable is the SAE's own ``encode``, so the sweep only truncates. For a TopK SAE that equals
TopK at k when k is at most its own k; above its own L0 the encoder cannot give more latents, and
its points report the achieved L0 (they pile up at the native L0 instead of pretending). To sweep
a TopK SAE past its k, pass ``encoder = ReLU(pre-activations)`` (the CLI's ``--encoder-sweep
pre_acts``, and its default ``auto`` for TopK and BatchTopK SAEs): its top-k is TopK's rule at
any k. Either way the encoder as it is (``native``, default ``encoder``) is reported as a single
point, and its L0 (rounded) is added to the sweep so that every coder is measured at the SAE's own L0.

No point claims an L0 it does not have: each records the achieved L0, and ``below_target`` marks the
points whose achieved L0 is under 95% of the target k (an encoder that cannot give more latents, a
tolerance that stopped a pursuit early); the printed table flags them.

The sweep shows a progress bar (stderr), one step per (coder, L0) point including its spliced loss.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.coding.base import CodingConfig, Dictionary, DictionaryLike, Encoder, as_dictionary
from mechscope.coding.encoder import encoder_code
from mechscope.coding.measures import span_cosines, support_jaccard
from mechscope.coding.registry import CODERS, NEEDS_ENCODER, Coder, make_coder
from mechscope.config import COUNT, check_ranges, to_dict
from mechscope.evals.metrics import ReconstructionStats

#: Supplied by the evaluation module: splices ``reconstruct`` into the model at the site and
#: returns losses, e.g. {"loss": …, "loss_recovered_zero": …, "loss_recovered_mean": …}.
LossFn = Callable[[Callable[[Tensor], Tensor]], dict[str, float]]


@dataclass(frozen=True)
class FrontierConfig:
    """What the frontier sweeps and how many rows it uses."""

    l0s: tuple[int, ...] = field(default=(8, 16, 32, 64, 128), metadata=COUNT)
    """Target L0 values to sweep (each ≥ 1)."""
    coders: tuple[str, ...] = ("encoder", "encoder_nnls", "encoder_scaled", "mp", "omp", "gp")
    """Coders to compare (names in the coder registry); encoder-based ones are skipped when there is no encoder."""
    encoder_sweep: Literal["auto", "truncate", "pre_acts"] = "auto"
    """How the SAE encoder is swept (:func:`sweep_encoder`): 'truncate' its own codes to top-k, or take top-k of ReLU(pre-activations)
    (TopK's rule at any k, for sweeping a TopK SAE past its own k; needs ``sae.pre_acts``); 'auto' is 'pre_acts'
    for TopK and BatchTopK SAEs and 'truncate' for every other."""
    include_native_l0: bool = True
    """Add the encoder's own L0 (rounded) to the sweep, so every coder is measured at the SAE's L0."""
    batch_size: int = field(default=1024, metadata=COUNT)
    """Rows coded at once (memory: about batch_size × (n + k·d) floats); ≥ 1."""
    eval_rows: int = field(default=8192, metadata=COUNT)
    """Held-out rows to evaluate on (the CLI reads them from the store's validation split); ≥ 1."""
    fit_rows: int = field(default=4096, metadata=COUNT)
    """Rows the post-hoc scale is fitted on (the CLI reads them from the training split); ≥ 1."""
    seed: int = 0
    """Seed of the store's shuffled batches."""
    progress: bool = True
    """Show a progress bar on stderr, one step per (coder, L0) point."""

    def __post_init__(self) -> None:
        check_ranges(self)
        unknown = set(self.coders) - set(CODERS)
        if unknown:
            raise ValueError(f"unknown coders {sorted(unknown)}; choose from {sorted(CODERS)}")
        if not self.l0s:
            raise ValueError("`l0s` is empty: give at least one target L0")


# What the encoder coders cut to top-k, by FrontierConfig.encoder_sweep (see the module docstring).
ENCODER_SWEEPS: dict[str, Callable[[Any], Callable[[Tensor], Tensor]]] = {
    "truncate": lambda sae: sae.encode,
    "pre_acts": lambda sae: lambda x: torch.relu(sae.pre_acts(x)),
}
#: Architectures whose encoder is top-k of ReLU(pre-activations), so 'auto' sweeps them past their own k that way.
TOPK_ARCHS = ("topk", "batchtopk")


def sweep_encoder(sae: Any, how: str = "auto") -> Callable[[Tensor], Tensor]:
    """The encoder the frontier cuts to top-k: ``how`` in ENCODER_SWEEPS, or 'auto' (pre_acts for TopK-like SAEs)."""
    if how == "auto":
        how = "pre_acts" if getattr(sae, "arch", None) in TOPK_ARCHS else "truncate"
    return ENCODER_SWEEPS[how](sae)


@dataclass
class FrontierPoint:
    """One coder at one target L0."""

    coder: str
    k: int | None
    """Target L0 (None for the encoder's native point)."""
    stats: dict[str, float]
    """ReconstructionStats.results(): fvu, l0 (achieved), cosine, norm_ratio, …"""
    jaccard: float | None = None
    """Mean support Jaccard with the encoder at the same k (None without an encoder)."""
    span_cosine: float | None = None
    """Mean |cos| between each newly chosen latent and the span of the earlier ones (None if no row has 2 latents)."""
    loss: dict[str, float] = field(default_factory=dict)
    """What loss_fn returned for this reconstruction (empty without a loss_fn)."""
    rows_per_s: float | None = None
    """Coding speed on the evaluation rows (wall clock, this machine, as loaded at the time)."""
    below_target: bool = False
    """The achieved L0 is under 95% of the target k: this coder could not (or chose not to) use k latents."""


@dataclass
class FrontierResult:
    config: FrontierConfig
    coding: CodingConfig
    points: list[FrontierPoint]
    native: FrontierPoint | None = None
    """The untruncated encoder (its own L0)."""
    baselines: dict[str, float] = field(default_factory=dict)
    """Reference losses drawn as horizontal lines (clean, zero/mean ablation, rock, …)."""

    def curve(self, coder: str) -> list[FrontierPoint]:
        """The points of one coder, by increasing target L0."""
        return sorted((p for p in self.points if p.coder == coder), key=lambda p: p.k or 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the HTML report."""
        return {
            "config": to_dict(self.config),
            "coding": to_dict(self.coding),
            "points": [dataclasses.asdict(p) for p in self.points],
            "native": None if self.native is None else dataclasses.asdict(self.native),
            "baselines": dict(self.baselines),
        }


def _reconstructor(coder: Callable[[Tensor], Tensor], batch_size: int) -> Callable[[Tensor], Tensor]:
    """Turn a rows → x̂ map into one for activations of any leading shape [..., d], in chunks."""

    def reconstruct(act: Tensor) -> Tensor:
        rows = act.reshape(-1, act.shape[-1])
        out = torch.cat([coder(chunk) for chunk in rows.split(batch_size)])
        return out.reshape(act.shape).to(act.dtype)

    return reconstruct


def _decoded(coder: Coder, dic: Dictionary) -> Callable[[Tensor], Tensor]:
    """rows [B, d] → x̂ [B, d] through a coder and the dictionary."""
    return lambda rows: coder(rows).decode(dic)


def _mean(total: float, count: float) -> float | None:
    return total / count if count > 0 else None


@torch.no_grad()
def frontier(
    x_eval: Tensor,
    dictionary: DictionaryLike | Dictionary | Tensor,
    encoder: Encoder | None = None,
    cfg: FrontierConfig = FrontierConfig(),
    coding: CodingConfig = CodingConfig(),
    x_fit: Tensor | None = None,
    loss_fn: LossFn | None = None,
    baselines: dict[str, float] | None = None,
    native: Encoder | None = None,
) -> FrontierResult:
    """Sweep target L0 for each coder on rows x_eval [B, d] (x_fit [R, d]: post-hoc scale fitting rows).

    ``coding`` sets everything but k (nonnegative, tol, NNLS steps, …); k comes from the sweep.
    ``encoder`` gives the codes that are cut to top-k; ``native`` (default ``encoder``) is the
    encoder as it is, for the single native point.
    """
    dic = as_dictionary(dictionary)
    names = [c for c in cfg.coders if encoder is not None or c not in NEEDS_ENCODER]
    if x_fit is None and "encoder_scaled" in names:
        raise ValueError("encoder_scaled needs x_fit rows, apart from the evaluation rows")
    batches = list(x_eval.to(dic.W_dec).split(cfg.batch_size))

    l0s = sorted(set(cfg.l0s))
    # The total is known only after the native point fixes the SAE's own L0: count it as a possible extra.
    extra = int(encoder is not None and cfg.include_native_l0)
    bar = tqdm(
        total=int(encoder is not None) + (len(l0s) + extra) * len(names),
        unit="point",
        desc="frontier",
        disable=not cfg.progress,
    )
    native_point = None
    if encoder is not None:
        bar.set_postfix_str("encoder (native)")
        native_point = _native_point(batches, dic, native or encoder, cfg.batch_size, loss_fn)
        bar.update(1)
        if cfg.include_native_l0:
            l0s = sorted(set(l0s) | {max(1, round(native_point.stats["l0"]))})
            bar.total = 1 + len(l0s) * len(names)
            bar.refresh()

    points = []
    for k in l0s:
        kcfg = dataclasses.replace(coding, k=k)
        coders = {name: make_coder(name, dic, kcfg, encoder, x_fit) for name in names}
        references = None if encoder is None else [encoder_code(xb, encoder, k) for xb in batches]
        for name, coder in coders.items():
            bar.set_postfix_str(f"{name} k={k}")
            point = _measure(batches, dic, k, name, coder, references)
            if loss_fn is not None:
                point.loss = dict(loss_fn(_reconstructor(_decoded(coder, dic), cfg.batch_size)))
            points.append(point)
            bar.update(1)
    bar.close()
    return FrontierResult(cfg, coding, points, native_point, dict(baselines or {}))


def _native_point(
    batches: list[Tensor], dic: Dictionary, encoder: Encoder, batch_size: int, loss_fn: LossFn | None
) -> FrontierPoint:
    """The encoder as it is, untruncated: x̂ = encode(x) W_dec + b_dec."""
    stats = ReconstructionStats()
    for xb in batches:
        codes = encoder(xb)
        stats.update(xb, dic.decode_dense(codes), codes)
    point = FrontierPoint("encoder", None, stats.results())
    if loss_fn is not None:
        point.loss = dict(loss_fn(_reconstructor(lambda rows: dic.decode_dense(encoder(rows)), batch_size)))
    return point


def _measure(
    batches: list[Tensor], dic: Dictionary, k: int, name: str, coder: Coder, references: list[Any] | None
) -> FrontierPoint:
    """Reconstruction stats, Jaccard with the encoder's top-k code (``references``, one per batch) and span
    cosine of one coder at one target k."""
    stats = ReconstructionStats()
    jaccard = rows = cos_sum = cos_n = seconds = 0.0
    for b, xb in enumerate(batches):
        start = time.perf_counter()
        code = coder(xb)
        seconds += time.perf_counter() - start
        stats.update(xb, code.decode(dic), code.dense(dic.n))
        if references is not None:
            jaccard += float(support_jaccard(code, references[b], dic.n).sum())
            rows += xb.shape[0]
        cos, valid = span_cosines(code, dic.W_dec)
        cos_sum += float(cos[valid].double().sum())
        cos_n += float(valid.sum())
    results = stats.results()
    return FrontierPoint(
        name,
        k,
        results,
        _mean(jaccard, rows),
        _mean(cos_sum, cos_n),
        rows_per_s=_mean(sum(xb.shape[0] for xb in batches), seconds),
        below_target=results["l0"] < 0.95 * k,
    )
