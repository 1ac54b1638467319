"""One toy model of superposition trained (or loaded from the cache) and described: its dimensions per feature,
feature dimensionalities and row norms beside the regular-polygon optimum where that applies, and a report
section with the rows of W drawn (``mechscope toy tms`` and ``mechscope demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mechscope.report.html import Section
from mechscope.toy import plots
from mechscope.toy.dimensionality import dims_per_feature, feature_dimensionality
from mechscope.toy.features import FeatureConfig
from mechscope.toy.models import ToyModelConfig, train_toy


def tms_result(features: FeatureConfig, toy: ToyModelConfig) -> tuple[dict[str, Any], torch.Tensor]:
    """Train (or load) the model; the JSON-ready result and W [n, m] of the best instance."""
    trained = train_toy(features, toy, progress=True)
    W = trained.W()
    norms = W.norm(dim=1)
    represented = norms > 0.1 * float(norms.max())
    return (
        {
            "dims_per_feature": dims_per_feature(W),
            "feature_dimensionality": feature_dimensionality(W).tolist(),
            "dims_per_represented_feature": toy.dims / int(represented.sum()),
            "norms": norms.tolist(),
            "bias": trained.model.get_parameter("b")[trained.best].tolist(),
            "loss": float(trained.losses[trained.best]),
            "W": W.tolist(),
            "theory": _polygon_theory(features, toy),
        },
        W,
    )


def _polygon_theory(features: FeatureConfig, toy: ToyModelConfig) -> dict[str, float] | None:
    """The optimum of the loss over regular n-gons with a common bias (mechscope.toy.theory), when it applies:
    TMS, m = 2, equal importances, n ≤ 8 (the Monte Carlo terms grow with n)."""
    if toy.kind != "tms" or toy.dims != 2 or features.importance_decay != 1.0 or features.n_features > 8:
        return None
    from mechscope.toy.theory import finite_p_optimum

    opt = finite_p_optimum(features.p, n=features.n_features, samples=5000)
    return {
        "norm": opt.a,
        "bias": opt.bias,
        "dims_per_feature": opt.dims_per_feature,
        "feature_dimensionality": opt.feature_dimensionality,
    }


def tms_section(features: FeatureConfig, toy: ToyModelConfig, out: Path) -> tuple[dict[str, Any], Section]:
    """Train (or load) the toy model, draw the rows of W into ``out``/tms.png; (the result, its report section)."""
    res, W = tms_result(features, toy)
    n, m, p = features.n_features, toy.dims, features.p
    D = ", ".join(f"{d:.3f}" for d in res["feature_dimensionality"])
    if m == 2:
        fig = plots.columns(W, f"TMS n={n}, m=2, p={p}: rows of W")
    else:
        fig = plots.columns(W[:, :2], f"TMS n={n}, m={m}: first two coordinates of W's rows")
    png = plots.save(fig, Path(out) / "tms.png")
    text = (
        f"ReLU toy model x' = ReLU(WᵀWx + b), n={n} features, m={m} dims, p={p}. "
        f"Dimensions per feature m/‖W‖²_F = {res['dims_per_feature']:.3f}; m / (represented features) = "
        f"{res['dims_per_represented_feature']:.3f}; feature dimensionalities D_i = ‖W_i‖²/Σ_j(Ŵ_i·W_j)²: {D}; "
        f"row norms {', '.join(f'{v:.3f}' for v in res['norms'])}."
    )
    if res["theory"]:
        t = res["theory"]
        text += (
            f" Optimum over regular {n}-gons with a common bias (mechscope.toy.theory): norm {t['norm']:.3f}, "
            f"bias {t['bias']:.3f}, m/‖W‖²_F {t['dims_per_feature']:.3f}, D_i {t['feature_dimensionality']:.3f}."
        )
    return res, Section("Toy model of superposition", text=text, figures=(("rows of W", png),))
