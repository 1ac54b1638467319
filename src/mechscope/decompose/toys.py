"""Known-answer targets for SPD built from the toy models: TMS as two Linear layers, and its true mechanisms.

TMS (mechscope.toy, Elhage et al. 2022), x' = ReLU(W Wᵀ x + b) for W [n, m], written as
y = ReLU(linear2(linear1(x))) with
linear1.weight = Wᵀ [m, n] (no bias) and linear2.weight = W [n, m], linear2.bias = b. Feature i's mechanism
is one rank-one piece per layer: W_i e_iᵀ in linear1 ([m, n]) and e_i W_iᵀ in linear2 ([n, m]), for every
represented feature (‖W_i‖ > 0.1 · max_j ‖W_j‖). The two layers are decomposed separately, as the paper does
(the weights are tied in the toy model, as in the reference code's TMS 5-2 target; SPD does not know that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.toy.features import FeatureConfig, SyntheticFeatures
from mechscope.toy.models import ToyModelConfig, check_superposition, train_toy


class TMSNet(nn.Module):
    """y = ReLU(linear2(linear1(x))): the toy model of superposition as two Linear layers."""

    def __init__(self, W: Tensor, b: Tensor):
        super().__init__()
        n, m = W.shape
        self.linear1 = nn.Linear(n, m, bias=False)
        self.linear2 = nn.Linear(m, n)
        with torch.no_grad():
            self.linear1.weight.copy_(W.T)
            self.linear2.weight.copy_(W)
            self.linear2.bias.copy_(b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.linear2(self.linear1(x)))


def tms_truth(W: Tensor) -> dict[str, Tensor]:
    """The represented features' rank-one mechanisms: linear1 [F, m, n], linear2 [F, n, m]."""
    n, m = W.shape
    norms = W.norm(dim=1)
    rep = torch.nonzero(norms > 0.1 * norms.max()).flatten()
    E = torch.eye(n)[rep]  # [F, n]
    return {"linear1": torch.einsum("fm,fn->fmn", W[rep], E), "linear2": torch.einsum("fn,fm->fnm", E, W[rep])}


@dataclass(frozen=True)
class TargetConfig:
    """The model to decompose, for the built-in known-answer models (ignored by a path). A field left at None
    takes the model's own default: the size the paper decomposed (see :meth:`resolve`)."""

    features: int | None = None
    """Features n (None: 5 for toy:tms, 100 for toy:resid-mlp, the SPD paper's sizes)."""
    dims: int | None = None
    """Hidden dimensions m (toy:tms) or MLP neurons (toy:resid-mlp), fewer than the features (None: 2 / 50)."""
    d_embed: int = 1000
    """Residual width of toy:resid-mlp (random unit feature embeddings, nearly orthogonal; the paper's 1000)."""
    p: float | None = None
    """Probability that a feature is active (None: 0.05 for toy:tms, 0.01 for toy:resid-mlp)."""
    toy_steps: int | None = None
    """Steps that train the toy model, cached in <cache> (None: 3000 for toy:tms, 1000 × 2048 rows for toy:resid-mlp)."""
    n_eval: int = 8192
    """Evaluation inputs (alive subcomponents, co-activation, dashboards)."""
    batch_size: int = 1024
    """Rows per training batch (set from SPD's --batch-size)."""
    seed: int = 0
    """Seed of the toy model and its data (set from SPD's --seed)."""

    def __post_init__(self) -> None:
        if self.features is not None:
            check_superposition(self.features, 1 if self.dims is None else self.dims)
        elif self.dims is not None and self.dims < 1:
            raise UsageError(f"--dims {self.dims}: give --dims ≥ 1 (and fewer than the features)")
        if self.p is not None and not 0 < self.p <= 1:
            raise UsageError(f"--p {self.p} must lie in (0, 1]")
        sizes = {
            "--toy-steps": self.toy_steps,
            "--n-eval": self.n_eval,
            "--batch-size": self.batch_size,
            "--d-embed": self.d_embed,
        }
        bad = [f"{k} {v}" for k, v in sizes.items() if v is not None and v < 1]
        if bad:
            raise UsageError(f"{', '.join(bad)}: must be ≥ 1")

    def resolve(self, **defaults) -> TargetConfig:
        """This config with every None field replaced by ``defaults`` (the model's own sizes)."""
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


@dataclass
class KnownModel:
    """A model whose mechanisms are known (or a user's model) to decompose, with what SPD needs to train on it and,
    where known, its truth (not a :class:`mechscope.task.Task`: SPD reads batches and outputs, no targets)."""

    model: nn.Module
    batch: Callable[[int], Tensor]
    """Deterministic training batch number ``step``."""
    eval_inputs: Tensor
    describe: Callable[[int], str]
    """Description of evaluation input ``i`` (for the dashboards)."""
    truth: dict[str, Tensor] | None
    """Per target, the true rank-one mechanisms [F, d_out, d_in] (or [F, d_out, k] with ``truth_basis``)."""
    output: Callable[[Tensor], Tensor] = lambda y: y
    output_loss: str = "mse"
    info: dict | None = None
    probes: tuple[Tensor, list[str]] | None = None
    """Probe inputs and their names (one row per feature) for the importance-matrix figure."""
    truth_basis: dict[str, Tensor] | None = None
    """Per target, a [d_in, k] basis of the inputs the data can give: truth and subcomponents are then compared
    as maps on it (U_c V_cᵀ B), so weight in directions no input has does not count."""
    extra: Callable | None = None
    """extra(spd, alive) -> dict of model-specific results merged into the JSON."""
    report_html: Callable | None = None
    """report_html(result) -> an HTML fragment for the report."""

    def to(self, device: torch.device) -> KnownModel:
        """This target on ``device``: the model moved (in place, ``nn.Module.to``), each training batch, the
        evaluation and probe inputs, the truth and its basis. Batches are still drawn on the cpu (the same rows on
        every device) and moved as they are asked for."""

        def move(t: Tensor) -> Tensor:
            return t.to(device)

        def moved(d: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if d is None else {k: move(v) for k, v in d.items()}

        draw = self.batch
        return replace(
            self,
            model=self.model.to(device),
            batch=lambda step: move(draw(step)),
            eval_inputs=move(self.eval_inputs),
            truth=moved(self.truth),
            truth_basis=moved(self.truth_basis),
            probes=None if self.probes is None else (move(self.probes[0]), self.probes[1]),
        )


def active_description(x: Tensor) -> Callable[[int], str]:
    def describe(i: int) -> str:
        nz = torch.nonzero(x[i]).flatten().tolist()
        return ", ".join(f"x{j}={float(x[i, j]):+.2f}" for j in nz) or "all zero"

    return describe


def nonzero_rows(feats: SyntheticFeatures, index: int, batch_size: int) -> Tensor:
    """[B, n] rows of batch ``index`` with at least one active feature (the distribution conditioned on that).

    Departure from the paper (whose TMS batches keep the all-zero rows, 77% of them at n=5, p=0.05): an
    all-zero row only teaches g(0) = 0, which the evaluation rows still check; dropping them gives ~4× the
    signal per step, which is what lets the known answer train in seconds on a CPU."""
    rows, have, k = [], 0, 0
    while have < batch_size:
        x = feats.batch(index * 64 + k, batch_size)[0]
        x = x[x.abs().sum(1) > 0]
        rows.append(x)
        have += len(x)
        k += 1
    return torch.cat(rows)[:batch_size]


def tms_target(cfg: TargetConfig = TargetConfig(), cache: bool = True) -> KnownModel:
    """Train (or load from the toy cache) TMS n-m and wrap it; data from the same feature distribution."""
    cfg = cfg.resolve(features=5, dims=2, p=0.05, toy_steps=3000)
    n, m, p, seed, batch_size = cfg.features, cfg.dims, cfg.p, cfg.seed, cfg.batch_size
    assert n is not None and m is not None and p is not None and cfg.toy_steps is not None  # resolved
    feats_cfg = FeatureConfig(n_features=n, p=p, seed=seed)
    trained = train_toy(feats_cfg, ToyModelConfig(kind="tms", dims=m, steps=cfg.toy_steps, seed=seed), cache=cache)
    W, b = trained.W(), trained.model.get_parameter("b")[trained.best].detach()
    feats = SyntheticFeatures(feats_cfg)
    x_eval = feats.batch(10_000_000, cfg.n_eval)[0]
    return KnownModel(
        TMSNet(W, b),
        lambda step: nonzero_rows(feats, 1_000_000 + step, batch_size),
        x_eval,
        active_description(x_eval),
        tms_truth(W),
        info={"model": f"TMS n={n} m={m} p={p}", "toy_loss": float(trained.losses[trained.best])},
        probes=(torch.eye(n), [f"x{i}=1" for i in range(n)]),
    )
