"""The toy model of compressed computation (a one-layer residual MLP; APD, Braun et al. 2025; SPD, Bushnaq et
al. 2025), at the papers' size by default, and its known answer.

Shapes: B rows, n features, d residual width (``d_embed``), H MLP neurons (``dims``, H < n).

x [B, n] sparse: each feature active with probability p, value U[−1, 1] (all-zero rows kept). The residual
stream is r = x E with fixed random unit-norm embeddings E [n, d] (buffers, not trained, not decomposed);
one MLP block r' = r + W_out ReLU(W_in r) (``mlp_in``: Linear d → H, ``mlp_out``: Linear H → d, no biases);
the output is y = r' Eᵀ [B, n] (W_U = W_Eᵀ). Trained with MSE to y_i = x_i + ReLU(x_i): n ReLUs with H < n
neurons. Papers' sizes (the defaults): n = 100, d = 1000, H = 50, p = 0.01; target training AdamW (weight
decay 0.01), lr 3e-3 with cosine decay, batch 2048, 1,000 steps (the reference code, goodfire-ai/spd,
``train_resid_mlp.py``). Our MSE sums over the n outputs where the reference code averages: the same optimum,
and the same AdamW steps (Adam's update does not depend on the loss's scale, and the weight decay is decoupled).

Known answer (the SPD paper's findings, not the APD paper's earlier reading of W_out):
- ``mlp_in``: one rank-one mechanism per feature, reading feature i and writing its neuron pattern. It is
  compared as a map on the features, which is all the data can ever feed it: subcomponent c acts on the
  features as S_c = U_c (V_cᵀ Eᵀ) [H, n], and feature i's mechanism is T_i = (W_in E_iᵀ) e_iᵀ [H, n] (column i
  of W_in Eᵀ: the paper's "neuron contributions" of feature i). MMCS = mean_i max_{c alive} cos(T_i, S_c).
  Departure: comparing raw weights (W_in E_iᵀ) E_i against U_c V_cᵀ [H, d] would also score the part of V_c in
  the 900 directions no input has (free under every SPD loss but faithfulness) and the non-orthogonality of
  the 100 random embeddings (their Gram matrix has eigenvalues 0.47–1.73 at n/d = 0.1), neither of which is
  part of the computation.
- ``mlp_out``: one mechanism of rank H, the whole W_out (SPD finds 50 subcomponents that co-activate on
  every input and sum to W_out). Checked by: alive count = H, how many of them each single-feature probe
  needs, and ‖E (Σ_alive U_c V_cᵀ − W_out)‖_F / ‖E W_out‖_F (the faithfulness of the alive ones, read out);
  and, as the other candidate, the MMCS of the H neuron columns W_out[:, j] e_jᵀ (read out by E) against the
  alive subcomponents: H alive pieces, one per neuron, each needed by the features that fire that neuron.
  Measured (docs/decompose.md): with the delta component SPD finds the neuron columns at n = 20, and turns a start
  at the co-active block into them; a neuron that is off makes its column free to mask, so importance
  minimality prefers the columns.
Baselines for the target model's loss, built and evaluated on the same rows: the MLP switched off (y = x E Eᵀ;
n p E[ReLU(x)²] = n p / 6 plus the embedding's interference, ≈ n p (n − 1) E[x²] / d) and the monosemantic
solution (neuron j reads and writes feature j < H, the APD paper's naive baseline).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.cache import RETRAIN, cache_dir, load_state, train_once
from mechscope.config import to_dict
from mechscope.decompose.analysis import Alive
from mechscope.decompose.spd import SPD
from mechscope.decompose.toys import KnownModel, TargetConfig, active_description
from mechscope.toy.recovery import mmcs
from mechscope.training import OptimConfig, fit

PAPER = dict(features=100, dims=50, p=0.01, toy_steps=1000)
TRAIN_BATCH = 2048  # the papers' target-model batch
PROBE_VALUE = 0.75  # the SPD paper's one-hot probes x_i = 0.75
COACTIVE = 0.9
"""W_out is one rank-H mechanism when H mlp_out subcomponents are alive, every probe needs (g > the alive threshold)
at least this share of them on average, and their sum is W_out as read out within :data:`READOUT_TOLERANCE`."""
READOUT_TOLERANCE = 0.1
"""‖E (Σ_alive U_c V_cᵀ − W_out)‖_F / ‖E W_out‖_F at most this for W_out's rank-H mechanism to count as recovered."""


class ResidMLP(nn.Module):
    """y = (r + W_out ReLU(W_in r)) Eᵀ with r = x E."""

    E: Tensor
    """[n, d] the fixed unit-norm feature embeddings (a buffer)."""

    def __init__(self, n: int, d: int, hidden: int, generator: torch.Generator):
        super().__init__()
        E = torch.randn(n, d, generator=generator)
        self.register_buffer("E", E / E.norm(dim=1, keepdim=True))
        self.mlp_in = nn.Linear(d, hidden, bias=False)
        self.mlp_out = nn.Linear(hidden, d, bias=False)
        with torch.no_grad():
            self.mlp_in.weight.copy_(torch.randn(hidden, d, generator=generator) / d**0.5)
            self.mlp_out.weight.copy_(torch.randn(d, hidden, generator=generator) / hidden**0.5)

    def forward(self, x: Tensor) -> Tensor:
        r = x @ self.E
        return (r + self.mlp_out(torch.relu(self.mlp_in(r)))) @ self.E.T


def labels(x: Tensor) -> Tensor:
    """y = x + ReLU(x)."""
    return x + torch.relu(x)


def task_loss(y: Tensor, x: Tensor) -> float:
    """Σ_i (y_i − label_i)² averaged over rows."""
    return float((y - labels(x)).pow(2).sum(-1).mean())


def _data(cfg: TargetConfig, index: int, batch_size: int) -> Tensor:
    assert cfg.features is not None and cfg.p is not None  # resolved (TargetConfig.resolve)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    on = torch.rand(batch_size, cfg.features, generator=g) < cfg.p
    return (2 * torch.rand(batch_size, cfg.features, generator=g) - 1) * on


def train_resid_mlp(cfg: TargetConfig, cache: bool = True) -> ResidMLP:
    """Train (or load from <cache>/decompose, :mod:`mechscope.cache`) the residual MLP as the papers: AdamW
    (weight decay 0.01), lr 3e-3 with cosine decay to 0, ``toy_steps`` × 2048 rows; only W_in and W_out are trained."""
    assert cfg.features is not None and cfg.dims is not None  # resolved (TargetConfig.resolve)
    model = ResidMLP(cfg.features, cfg.d_embed, cfg.dims, torch.Generator().manual_seed(cfg.seed))
    if not cache:
        return _fit(model, cfg)
    # v3: digest-checked files (mechscope.cache); older ones are trained again
    blob = json.dumps(
        {"v": 3, **{k: v for k, v in to_dict(cfg).items() if k not in ("batch_size", "n_eval")}}, sort_keys=True
    )
    path = cache_dir() / "decompose" / f"resid-mlp-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.safetensors"
    tensors = train_once(path, lambda: _fit(model, cfg).state_dict())
    load_state(model, tensors, path, RETRAIN)
    return model


def _fit(model: ResidMLP, cfg: TargetConfig) -> ResidMLP:
    assert cfg.toy_steps is not None  # resolved (TargetConfig.resolve)
    fit(
        [model.mlp_in.weight, model.mlp_out.weight],
        lambda x: (model(x) - labels(x)).pow(2).sum(-1).mean(),
        lambda step: _data(cfg, 10_000_000 + step, TRAIN_BATCH),
        OptimConfig("adamw", lr=3e-3, weight_decay=0.01, schedule="cosine"),
        steps=cfg.toy_steps,
    )
    return model


def monosemantic(model: ResidMLP) -> ResidMLP:
    """The naive baseline on the same embeddings: neuron j reads feature j and writes it back (j < H), so
    features 0 … H−1 get their ReLU (up to embedding interference) and the others none."""
    n, d = model.E.shape
    H = model.mlp_in.out_features
    base = ResidMLP(n, d, H, torch.Generator().manual_seed(0))
    with torch.no_grad():
        base.E.copy_(model.E)
        base.mlp_in.weight.copy_(model.E[:H])
        base.mlp_out.weight.copy_(model.E[:H].T)
    return base


def resid_mlp_truth(model: ResidMLP) -> dict[str, Tensor]:
    """mlp_in [n, H, n]: T_i = (W_in E_iᵀ) e_iᵀ, feature i's mechanism as a map on the features."""
    A = model.mlp_in.weight.detach() @ model.E.T  # [H, n]: column i = feature i's neuron contributions
    n = A.shape[1]
    return {"mlp_in": torch.einsum("hi,ij->ihj", A, torch.eye(n))}


@torch.no_grad()
def mlp_out_check(spd: SPD, live: Alive, model: ResidMLP, probes: Tensor) -> dict[str, Any]:
    """W_out as one rank-H mechanism: alive count against H, how many alive mlp_out subcomponents each probe needs
    (g > the alive threshold) and as a share of the alive ones (``coactive_fraction``), the read-out relative
    error of the alive subcomponents' sum, and ``recovered``: H alive, co-active share ≥ :data:`COACTIVE`, error
    ≤ :data:`READOUT_TOLERANCE` (the paper's finding: H subcomponents that co-activate on every input and sum to
    W_out)."""
    H = model.mlp_out.in_features
    idx = [c for t, c in live.labels if t == "mlp_out"]
    out: dict[str, Any] = {"true_rank": H, "alive": len(idx)}
    if "mlp_out" not in spd.names:
        return out
    comp = spd.comp("mlp_out")
    W = model.mlp_out.weight.detach()
    S = comp.subcomponents()[idx].sum(0) if idx else torch.zeros_like(W)
    probes = probes.to(spd.device)
    out["relative_readout_error"] = float((model.E @ (S - W)).norm() / (model.E @ W).norm())
    if idx:  # the other candidate: one piece per neuron, W_out[:, j] e_jᵀ, compared as read out (E ·)
        cols = torch.einsum("nh,hj->jnh", model.E @ W, torch.eye(H, device=W.device)).flatten(1)  # [H, n·H]
        subs = (model.E @ comp.subcomponents()[idx]).flatten(1)
        out["neuron_column_mmcs"] = mmcs(cols, subs)
    g = spd.causal_importances(probes)["mlp_out"][:, idx] if idx else torch.zeros(len(probes), 0, device=spd.device)
    needed = (g > spd.cfg.alive_threshold).sum(1).float()
    out["needed_per_probe_mean"] = float(needed.mean()) if idx else 0.0
    out["needed_per_probe_min"] = int(needed.min()) if idx else 0
    out["coactive_fraction"] = float(needed.mean()) / len(idx) if idx else 0.0
    out["recovered"] = bool(
        len(idx) == H and out["coactive_fraction"] >= COACTIVE and out["relative_readout_error"] <= READOUT_TOLERANCE
    )
    return out


@torch.no_grad()
def mlp_in_probe_check(spd: SPD, live: Alive, probes: Tensor) -> dict[str, Any]:
    """How many alive mlp_in subcomponents each one-hot probe needs (g > threshold); the known answer is 1,
    a different one per feature."""
    idx = [c for t, c in live.labels if t == "mlp_in"]
    if not idx:
        return {"needed_per_probe_mean": 0.0, "probes_needing_exactly_one": 0.0, "distinct_top_subcomponents": 0}
    g = spd.causal_importances(probes.to(spd.device))["mlp_in"][:, idx]
    needed = (g > spd.cfg.alive_threshold).sum(1)
    return {
        "needed_per_probe_mean": float(needed.float().mean()),
        "probes_needing_exactly_one": float((needed == 1).float().mean()),
        "distinct_top_subcomponents": len(set(g.argmax(1).tolist())),
    }


def resid_mlp_target(cfg: TargetConfig, cache: bool = True) -> KnownModel:
    cfg = cfg.resolve(**PAPER)
    assert cfg.features is not None and cfg.p is not None
    model = train_resid_mlp(cfg, cache)
    x = _data(cfg, 20_000_000, 8192)
    with torch.no_grad():
        loss, mono = task_loss(model(x), x), task_loss(monosemantic(model)(x), x)
        off = task_loss(x @ model.E @ model.E.T, x)  # the MLP switched off: y = x E Eᵀ
    x_eval = _data(cfg, 30_000_000, cfg.n_eval)
    probes = PROBE_VALUE * torch.eye(cfg.features)

    def extra(spd: SPD, live: Alive) -> dict[str, Any]:
        out_check = mlp_out_check(spd, live, model, probes)
        in_check = mlp_in_probe_check(spd, live, probes)
        res: dict[str, Any] = {"mlp_out": out_check, "mlp_in_probes": in_check}
        if "mlp_out" in spd.names and "mlp_in" in spd.names:
            n_in = sum(1 for t, _ in live.labels if t == "mlp_in")
            res["alive_matches_truth"] = n_in == cfg.features and out_check["alive"] == out_check["true_rank"]
        return res

    def report_html(res: dict[str, Any]) -> str:
        o, i = res.get("mlp_out", {}), res.get("mlp_in_probes", {})
        rows = [
            ("target loss (Σ over features, mean over rows)", f"{loss:.4f}"),
            ("monosemantic baseline", f"{mono:.4f}"),
            ("MLP switched off", f"{off:.4f}"),
            (
                "mlp_in: alive subcomponents needed per probe x_i = 0.75 (truth 1)",
                f"{i.get('needed_per_probe_mean', float('nan')):.2f}",
            ),
            ("mlp_in: distinct top subcomponents over the probes (truth n)", str(i.get("distinct_top_subcomponents"))),
            ("mlp_out: alive / rank H (truth: one rank-H mechanism)", f"{o.get('alive')} / {o.get('true_rank')}"),
            (
                "mlp_out: read-out error of the alive subcomponents' sum",
                f"{o.get('relative_readout_error', float('nan')):.3f}",
            ),
            ("mlp_out: MMCS against the H neuron columns", f"{o.get('neuron_column_mmcs', float('nan')):.3f}"),
            (
                "mlp_out: share of the alive subcomponents each probe needs (truth 1: all co-active)",
                f"{o.get('coactive_fraction', float('nan')):.2f}",
            ),
            (
                f"mlp_out recovered as one rank-H mechanism (H alive, share ≥ {COACTIVE}, error ≤ {READOUT_TOLERANCE})",
                str(o.get("recovered")),
            ),
        ]
        from mechscope.report.markup import table

        return table(("check", "value"), rows, classes=("", "num"))

    info = {
        "model": f"resid-MLP n={cfg.features} d={cfg.d_embed} H={cfg.dims} p={cfg.p}",
        "toy_loss": loss,
        "toy_loss_monosemantic": mono,
        "toy_loss_without_mlp": off,
        "toy_loss_without_mlp_formula": cfg.features * cfg.p / 6,
    }
    return KnownModel(
        model,
        lambda step: _data(cfg, step, cfg.batch_size),
        x_eval,
        active_description(x_eval),
        resid_mlp_truth(model),
        info=info,
        probes=(probes, [f"x{i}={PROBE_VALUE}" for i in range(cfg.features)]),
        truth_basis={"mlp_in": model.E.T},
        extra=extra,
        report_html=report_html,
    )
