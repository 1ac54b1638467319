"""The ground-truth benchmark: every registered SAE architecture and every coder, scored against the
true features of one hand-made superposition, at one matched L0.

Shapes: F true features, d width, n latents, k target L0, R evaluation rows.

Data: x = f D, f from :class:`~mechscope.toy.features.SyntheticFeatures` (with a hierarchy and
log-normal per-feature scales), D [F, d] random unit directions. Each architecture in
:data:`mechscope.sae.REGISTRY` trains with the shared :class:`~mechscope.sae.Trainer` on the same
on-the-fly batches, one sweep (``ARCH_SETTINGS`` holds the few per-architecture settings the short
budget needs; an architecture without an entry uses its config's defaults, and its ``k`` when it has
one, so a new registry entry joins with no change here). Every coder in
:data:`mechscope.coding.CODERS` codes the same evaluation rows against the dictionary (and encoder) of
the reference SAE (``topk``), and the dictionary-only coders also against the true D (an upper
bound: the truth is the best dictionary there is).

Matched L0: k = round(expected number of active features per row) unless set. TopK-like
architectures train with k; the others train with their own sparsity penalty and are *scored on
their codes cut to the k largest activations* (their native L0 is reported beside it), so every
row of the table uses at most k latents per row. Scores (see :mod:`mechscope.toy.recovery`): FVU of
the reconstruction, MMCS of the dictionary, fraction of true features matched one-to-one above
cosine 0.9, and per-row support F1 of the codes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechscope.config import LEARNING_RATE, check_ranges
from mechscope.errors import UsageError
from mechscope.toy.features import (
    SCALE_SIGMA,
    FeatureConfig,
    SyntheticFeatures,
    random_directions,
)
from mechscope.toy.models import check_superposition
from mechscope.toy.recovery import Matching, hungarian, mmcs, support_scores

# Per-architecture config fields and learning rate for this short budget (measured on the default
# benchmark); anything not named keeps the architecture's defaults.
ARCH_SETTINGS: dict[str, dict[str, Any]] = {
    "batchtopk": {"auxk_coef": 1.0},
    "matryoshka": {"auxk_coef": 1.0},
    "jumprelu": {"sparsity_coef": 2.0, "bandwidth": 1.0, "threshold_init": 0.5, "auxk_coef": 1.0, "lr_scale": 2.0},
    "gated": {"l1_coef": 5.0},
}


@dataclass(frozen=True)
class BenchConfig:
    """The synthetic data, the dictionaries and the training budget of the benchmark."""

    n_features: int = 4096
    """True features F."""
    d: int = 256
    """Width d of the superposed activations."""
    p: float = 0.0015
    """Probability that an independent (or parent) feature is active on a row."""
    parents: int = 256
    """Parent features of the hierarchy (each with ``children_per_parent`` children)."""
    children_per_parent: int = 3
    """Children per parent; a child fires only with its parent (then with probability 1/2)."""
    scale_sigma: float = field(default=0.5, metadata=SCALE_SIGMA)
    """σ of the log-normal per-feature scales, in [0, 10]."""
    latents: int = 4096
    """Latents n of every SAE (0 = as many as true features)."""
    k: int = 0
    """Target L0 of every method; 0 = the rounded expected number of active features per row."""
    steps: int = 1200
    """Training steps of every SAE (all train together on the same batches)."""
    batch_size: int = 256
    """Rows per training step."""
    lr: float = field(default=4e-3, metadata=LEARNING_RATE)
    """Peak Adam learning rate (times an architecture's ``lr_scale`` in ARCH_SETTINGS), in (0, 10]."""
    eval_rows: int = 4096
    """Held-out rows every method is scored on."""
    archs: tuple[str, ...] = ()
    """SAE architectures to train (empty = every registered one)."""
    coders: tuple[str, ...] = ()
    """Coders to score (empty = every registered one)."""
    seed: int = 0
    """Seed of the features, the directions and the training."""
    curve_points: int = 12
    """Points of the convergence curve (MMCS of every SAE against rows seen, log-spaced steps); 0 = none."""
    device: str = "cpu"
    """Training device of the SAEs: cpu, cuda, cuda:N or auto (scoring always runs on the CPU)."""

    def __post_init__(self) -> None:
        from mechscope.preflight import check_device

        check_ranges(self)
        check_superposition(self.n_features, self.d, "`n_features`", "`d`")
        check_device(self.device)
        if min(self.steps, self.batch_size, self.eval_rows) < 1 or min(self.latents, self.k, self.curve_points) < 0:
            raise UsageError(
                f"`steps`, `batch_size` and `eval_rows` must be ≥ 1, `latents`, `k` and `curve_points` ≥ 0; got "
                f"{self.steps}, {self.batch_size}, {self.eval_rows}, {self.latents}, {self.k}, {self.curve_points}"
            )
        if not 0 < self.p <= 1:
            raise UsageError(f"`p` {self.p} must lie in (0, 1]")
        if not 0 < self.lr < math.inf:
            raise UsageError(f"`lr` {self.lr} must be positive and finite")
        check_k(self.k, self.latents or self.n_features)

    def features(self) -> FeatureConfig:
        return FeatureConfig(
            n_features=self.n_features,
            p=self.p,
            parents=self.parents,
            children_per_parent=self.children_per_parent,
            scale_sigma=self.scale_sigma,
            seed=self.seed,
        )


def check_k(k: int, latents: int, what: str = "`latents`") -> None:
    """Refuse a target L0 above the dictionary size: every method keeps k of the ``latents`` latents."""
    if k > latents:
        raise UsageError(
            f"`k` {k} is more than the {latents} latents of {what}: every method keeps k latents per row; "
            f"give `k` between 1 and {latents} (0: the expected number of active features)"
        )


def curve_steps(steps: int, points: int) -> list[int]:
    """``points`` log-spaced steps in [1, steps] (deduplicated, always ending at ``steps``)."""
    if points <= 0:
        return []
    return sorted({int(round(v)) for v in np.geomspace(max(1, steps / 2 ** (points - 1)), steps, points)} | {steps})


def with_curve(
    batches: Iterator[Tensor], trainer, at: list[int], truth: Tensor, curve: list[dict[str, Any]]
) -> Iterator[Tensor]:
    """Pass ``batches`` through; whenever the trainer has just finished a step in ``at``, append
    {"step", "rows", "mmcs": {member: MMCS of its decoder rows}} to ``curve`` (the convergence curve)."""
    todo = set(at)
    for x in batches:
        if trainer.step in todo:
            todo.discard(trainer.step)
            curve.append(_curve_point(trainer, truth, x.shape[0]))
        yield x
    # the generator is not resumed after the last step: callers record the final point themselves


def _curve_point(trainer, truth: Tensor, batch_size: int) -> dict[str, Any]:
    with torch.no_grad():
        return {
            "step": trainer.step,
            "rows": trainer.step * batch_size,
            "mmcs": {
                m.name: mmcs(truth, sae.W_dec.detach().float().cpu()) for m, sae in zip(trainer.members, trainer.saes)
            },
        }


class Superposition:
    """x = f D on the fly: ``batches`` for training, ``held_out`` (x [R, d], active [R, F]) for scoring."""

    def __init__(self, features: FeatureConfig, d: int, seed: int = 0):
        self.features = SyntheticFeatures(features)
        self.directions = random_directions(features.n_features, d, seed + 7919)  # [F, d]

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        for f, _ in self.features.batches(batch_size):
            yield f @ self.directions

    def held_out(self, rows: int) -> tuple[Tensor, Tensor]:
        f, on = self.features.batch(-1, rows)  # batch −1 is never a training batch
        return f @ self.directions, on


def _select(requested: tuple[str, ...], registry: dict, what: str) -> list[str]:
    unknown = [a for a in requested if a not in registry]
    if unknown:
        raise UsageError(f"unknown {what} {unknown}; choose from {sorted(registry)}")
    return list(requested or registry)


def members(cfg: BenchConfig, k: int, archs: list[str]) -> list:
    from mechscope.sae import REGISTRY, Member, OptimConfig

    out = []
    for arch in archs:
        cls = REGISTRY[arch]
        fields = {f.name for f in dataclasses.fields(cls.config_cls)}
        settings = dict(ARCH_SETTINGS.get(arch, {}))
        lr = cfg.lr * settings.pop("lr_scale", 1.0)
        kw = {name: v for name, v in settings.items() if name in fields}
        if "k" in fields:
            kw["k"] = k
        sae_cfg = cls.config_cls(d_in=cfg.d, latents=cfg.latents or cfg.n_features, **kw)
        out.append(Member(sae_cfg, OptimConfig(lr=lr, warmup_steps=min(100, cfg.steps // 10)), name=arch))
    return out


def score(
    x: Tensor, active: Tensor, truth: Tensor, W_dec: Tensor, code, decode, match: Matching | None = None
) -> dict[str, float]:
    """FVU, L0, MMCS, matched > 0.9 and support P/R/F1 of one code (SparseCodes) against one dictionary
    (``match``: its Hungarian matching to the truth, when already computed)."""
    from mechscope.evals.metrics import fvu

    match = match or hungarian(truth, W_dec)
    n = W_dec.shape[0]
    support = code.support(n)
    return {
        "fvu": fvu(x, decode(code)),
        "l0": float(support.sum(1).double().mean()),
        "mmcs": mmcs(truth, W_dec),
        "matched_0.9": match.fraction_above(0.9),
        **support_scores(active, support, match.feature_of_latent),
    }


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Train every architecture, code with every coder, score all; returns {"config", "k", "rows": [...]}."""
    from mechscope.coding import (
        CODERS,
        NEEDS_ENCODER,
        CodingConfig,
        make_coder,
        top_k_code,
    )
    from mechscope.sae import TrainConfig, Trainer

    archs = _select(cfg.archs, __import__("mechscope.sae", fromlist=["REGISTRY"]).REGISTRY, "architectures")
    coders = _select(cfg.coders, CODERS, "coders")
    data = Superposition(cfg.features(), cfg.d, cfg.seed)
    k = cfg.k or max(1, round(data.features.expected_l0()))
    check_k(k, cfg.latents or cfg.n_features)
    x, active = data.held_out(cfg.eval_rows)
    truth = data.directions
    t0 = time.time()
    trainer = Trainer(
        members(cfg, k, archs),
        TrainConfig(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            dead_window=50 * cfg.batch_size,
            progress=progress,
            device=cfg.device,
        ),
    )
    curve: list[dict[str, Any]] = []
    at = curve_steps(cfg.steps, cfg.curve_points)
    trainer.fit(with_curve(data.batches(cfg.batch_size), trainer, at[:-1], truth, curve))
    if at:
        curve.append(_curve_point(trainer, truth, cfg.batch_size))
    rows: list[dict[str, Any]] = []
    saes = {m.name: trainer.export(i).cpu() for i, m in enumerate(trainer.members)}
    train_s = time.time() - t0
    with torch.no_grad():
        for name, sae in tqdm(saes.items(), disable=not progress, desc="scoring SAEs"):
            dense = sae.encode(x)
            native_l0 = float((dense != 0).sum(1).double().mean())
            code = top_k_code(dense, k)
            rows.append(
                {
                    "method": name,
                    "kind": "sae",
                    "dictionary": name,
                    "native_l0": native_l0,
                    **score(x, active, truth, sae.W_dec, code, lambda c, s=sae: c.decode(s)),
                }
            )
        ref_name = "topk" if "topk" in saes else next(iter(saes))
        ref = saes[ref_name]
        ref_match, truth_match = hungarian(truth, ref.W_dec), hungarian(truth, truth)
        x_fit = next(data.batches(cfg.eval_rows))
        coding = CodingConfig(k=k)
        for name in tqdm(coders, disable=not progress, desc="scoring coders"):
            coder = make_coder(name, ref, coding, encoder=ref.encode, fit_rows=x_fit)
            code = coder(x)
            rows.append(
                {
                    "method": name,
                    "kind": "coder",
                    "dictionary": ref_name,
                    **score(x, active, truth, ref.W_dec, code, lambda c: c.decode(ref), ref_match),
                }
            )
            if name not in NEEDS_ENCODER:
                code = make_coder(name, truth, coding)(x)
                rows.append(
                    {
                        "method": f"{name} @ truth",
                        "kind": "coder",
                        "dictionary": "true directions",
                        **score(x, active, truth, truth, code, lambda c: c.decode(truth), truth_match),
                    }
                )
    from mechscope.config import to_dict

    return {
        "config": to_dict(cfg),
        "k": k,
        "expected_l0": data.features.expected_l0(),
        "train_seconds": train_s,
        "rows": rows,
        "curve": curve,
    }


def dict_size_sweep(
    cfg: BenchConfig, sizes: tuple[int, ...], arch: str = "topk", progress: bool = True
) -> list[dict[str, Any]]:
    """Train one ``arch`` SAE per dictionary size (one shared pass of data) and score its recovery;
    a phase change shows as a jump in MMCS / matched fraction once n approaches the number of features."""
    from mechscope.coding import top_k_code
    from mechscope.sae import TrainConfig, Trainer

    if len(sizes) < 2:
        raise UsageError(f"a dictionary-size sweep needs at least two sizes, got {list(sizes)}; pass several `sizes`")
    data = Superposition(cfg.features(), cfg.d, cfg.seed)
    k = cfg.k or max(1, round(data.features.expected_l0()))
    check_k(k, min(sizes), "the smallest of `sizes`")
    ms = [
        dataclasses.replace(m, name=f"{arch}-{n}", sae=dataclasses.replace(m.sae, latents=n))
        for n in sizes
        for m in members(cfg, k, [arch])
    ]
    trainer = Trainer(
        ms,
        TrainConfig(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            dead_window=50 * cfg.batch_size,
            progress=progress,
            device=cfg.device,
        ),
    )
    trainer.fit(data.batches(cfg.batch_size))
    x, active = data.held_out(cfg.eval_rows)
    out = []
    with torch.no_grad():
        for i, n in enumerate(sizes):
            sae = trainer.export(i).cpu()
            code = top_k_code(sae.encode(x), k)
            out.append(
                {"latents": n, **score(x, active, data.directions, sae.W_dec, code, lambda c, s=sae: c.decode(s))}
            )
    return out
