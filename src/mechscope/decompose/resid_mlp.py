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
- ``mlp_out``: H alive subcomponents that together make up W_out (the SPD paper: 50 subcomponents, read as one
  rank-50 mechanism because a one-hot input needs many of them). The paper's check, as the reference code scores it
  (goodfire-ai/spd ``IdentityCIError`` with ``DenseCIPattern(k=50)`` on the one-hot probes x_i = 0.75), is
  :func:`dense_pattern_error` = 0: exactly H subcomponents with importance > 0.1 on some probe, each ≥ 0.9 on at
  least one; it asks neither that they co-activate nor for a basis. ``recovered`` is that check plus the read-out
  error ‖E (Σ_alive U_c V_cᵀ − W_out)‖_F / ‖E W_out‖_F ≤ :data:`READOUT_TOLERANCE` (they sum to W_out where the
  output reads it). Also reported: how many each probe needs (``coactive_fraction``: 1 would be the paper's
  reading, all H co-active) and the MMCS against the H neuron columns W_out[:, j] e_jᵀ (read out by E).
  Measured (docs/decompose.md): SPD finds the neuron columns, each needed by the features that fire its neuron
  (at the papers' size a probe fires 28 of the 50 neurons, hence "many"), and turns a start at a co-active block
  into them: a neuron that is off makes its column free to mask, so importance minimality prefers the columns.
Baselines for the target model's loss, built and evaluated on the same rows: the MLP switched off (y = x E Eᵀ;
n p E[ReLU(x)²] = n p / 6 plus the embedding's interference, ≈ n p (n − 1) E[x²] / d) and the monosemantic
solution (neuron j reads and writes feature j < H, the APD paper's naive baseline).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
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
PATTERN_TOLERANCE = 0.1
"""The reference code's tolerance in its pattern checks (:func:`identity_pattern_error`, :func:`dense_pattern_error`):
an importance above it counts as needed, one below 1 − it as not fully needed."""
READOUT_TOLERANCE = 0.2
"""‖E (Σ_alive U_c V_cᵀ − W_out)‖_F / ‖E W_out‖_F at most this for W_out to count as recovered (with the delta
component the subcomponents sum to W_out only where the data reaches it: 0.13–0.14 measured at n = 20)."""


def identity_pattern_error(g: Tensor, tolerance: float = PATTERN_TOLERANCE) -> int:
    """The reference code's identity check (``IdentityCIPattern``) of probe importances g [n probes, C ≥ n]: match
    probes to subcomponents one to one (Hungarian, largest total importance), then count the matched entries below
    1 − ``tolerance`` and every other entry above ``tolerance``. 0 = each probe needs exactly its own subcomponent."""
    n, C = g.shape
    if C < n:
        raise ValueError(f"identity pattern: `g` has {C} subcomponents for {n} probes; it needs at least {n}")
    rows, cols = linear_sum_assignment(g.detach().cpu().numpy(), maximize=True)
    on = torch.zeros_like(g, dtype=torch.bool)
    on[torch.as_tensor(rows), torch.as_tensor(cols)] = True
    return int((g[on] < 1 - tolerance).sum() + (g[~on] > tolerance).sum())


def dense_pattern_error(g: Tensor, k: int, tolerance: float = PATTERN_TOLERANCE) -> int:
    """The reference code's dense check (``DenseCIPattern``, min_entries 1) of probe importances g [n probes, C]:
    sort the subcomponents by total importance; count those of the first ``k`` with no entry ≥ 1 − ``tolerance``, and
    every entry above ``tolerance`` of the rest. 0 = exactly k subcomponents needed, each fully by some probe."""
    if not 1 <= k <= g.shape[1]:
        raise ValueError(f"dense pattern: `k` = {k} must be in [1, {g.shape[1]}] (the subcomponents in `g`)")
    ranked = g[:, g.sum(0).argsort(descending=True)]
    missing = int((~(ranked[:, :k] >= 1 - tolerance).any(0)).sum())
    return missing + int((ranked[:, k:] > tolerance).sum())


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
    """W_out against the paper's answer (H subcomponents that make up W_out; module docstring): alive count against
    H, ``dense_pattern_error`` on the probes (the reference code's check, k = H), the read-out relative error of the
    alive subcomponents' sum, how many alive mlp_out subcomponents each probe needs (g > the alive threshold) and as
    a share of the alive ones (``coactive_fraction``), the MMCS against the H neuron columns, and ``recovered``:
    dense pattern error 0 and read-out error ≤ :data:`READOUT_TOLERANCE`."""
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
    g_all = spd.causal_importances(probes)["mlp_out"]  # [n probes, C]
    out["dense_pattern_error"] = dense_pattern_error(g_all, min(H, g_all.shape[1]))
    g = g_all[:, idx]
    needed = (g > spd.cfg.alive_threshold).sum(1).float()
    out["needed_per_probe_mean"] = float(needed.mean()) if idx else 0.0
    out["needed_per_probe_min"] = int(needed.min()) if idx else 0
    out["coactive_fraction"] = float(needed.mean()) / len(idx) if idx else 0.0
    out["recovered"] = bool(out["dense_pattern_error"] == 0 and out["relative_readout_error"] <= READOUT_TOLERANCE)
    return out


@torch.no_grad()
def mlp_in_probe_check(spd: SPD, live: Alive, probes: Tensor) -> dict[str, Any]:
    """How many alive mlp_in subcomponents each one-hot probe needs (g > threshold); the known answer is 1,
    a different one per feature; and ``identity_pattern_error``, the reference code's check of that over all C
    subcomponents (0 = every probe needs its own one fully and no other)."""
    idx = [c for t, c in live.labels if t == "mlp_in"]
    g_all = spd.causal_importances(probes.to(spd.device))["mlp_in"]
    err = identity_pattern_error(g_all) if g_all.shape[1] >= g_all.shape[0] else None
    if not idx:
        return {
            "needed_per_probe_mean": 0.0,
            "probes_needing_exactly_one": 0.0,
            "distinct_top_subcomponents": 0,
            "identity_pattern_error": err,
        }
    g = g_all[:, idx]
    needed = (g > spd.cfg.alive_threshold).sum(1)
    return {
        "identity_pattern_error": err,
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
        fired = (model.mlp_in(PROBE_VALUE * model.E) > 0).sum(1).float()  # neurons each probe x_i = 0.75 fires
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
            ("mlp_in: the reference code's identity-pattern error (truth 0)", str(i.get("identity_pattern_error"))),
            ("mlp_out: alive / H (truth: H subcomponents making up W_out)", f"{o.get('alive')} / {o.get('true_rank')}"),
            ("mlp_out: the reference code's dense-pattern error, k = H (truth 0)", str(o.get("dense_pattern_error"))),
            (
                "mlp_out: read-out error of the alive subcomponents' sum",
                f"{o.get('relative_readout_error', float('nan')):.3f}",
            ),
            ("mlp_out: MMCS against the H neuron columns", f"{o.get('neuron_column_mmcs', float('nan')):.3f}"),
            (
                "mlp_out: share of the alive subcomponents each probe needs (1 = the paper's all-co-active reading)",
                f"{o.get('coactive_fraction', float('nan')):.2f}",
            ),
            (
                f"mlp_out recovered (dense-pattern error 0, read-out error ≤ {READOUT_TOLERANCE})",
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
        "neurons_fired_per_probe": float(fired.mean()),  # a neuron-column W_out piece is needed by these
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
