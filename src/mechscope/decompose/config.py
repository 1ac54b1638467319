"""The SPD configuration: one frozen dataclass, a docstring per field; the CLI flags come from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mechscope.config import COEFFICIENT, COUNT, LEARNING_RATE, NON_NEGATIVE, check_ranges, in_range
from mechscope.errors import UsageError

SLOPE = in_range(0, 1)
"""Range of a leaky slope of the hard sigmoid: [0, 1] (1 is the identity's slope)."""


@dataclass(frozen=True)
class SPDConfig:
    """Stochastic parameter decomposition (Bushnaq et al. 2025) of a model's Linear / Embedding weights.

    Defaults follow the paper's TMS settings (C = 20, CI MLP width 16, p = 1, stochastic and layerwise
    reconstruction coefficients 1, 200 faithfulness warm-up steps at lr 0.01) with four departures, all for a
    run of 2,000 steps × 256 rows instead of the paper's 40,000 × 4,096 (its appendix; the reference code's
    tms_5-2 config uses 10,000 × 4,096) (what two shared CPU cores do in
    seconds): peak lr 3e-2 (paper 1e-3), importance coefficient 3e-2 (paper 3e-3 on an MSE averaged over the outputs, i.e. 1.5e-2 for TMS 5-2 in our summed MSE), and an upper-leaky slope of
    1 above g = 1 (paper 0.01). Why: with the paper's values at this budget the importances saturate above 1,
    where the reconstruction loss has no gradient and a 0.01 slope pulls them back too slowly, so every
    subcomponent stays alive (measurements in docs/decompose.md). Per-model settings that replace these
    defaults are in ``targets.SPD_DEFAULTS``."""

    C: int = field(default=20, metadata=COUNT)
    """Rank-one subcomponents per target weight (the rank of the decomposition); ≥ 1."""
    targets: tuple[str, ...] = ("*",)
    """Module-name patterns (fnmatch) of the weights to decompose; '*' = every Linear and Embedding."""
    ci_hidden: int = field(default=16, metadata=COUNT)
    """Hidden width of each subcomponent's causal-importance MLP (scalar vᵀx → 1, GELU); ≥ 1."""
    steps: int = field(default=2000, metadata=COUNT)
    """Adam steps after the faithfulness warm-up; ≥ 1."""
    batch_size: int = field(default=256, metadata=COUNT)
    """Inputs per step; ≥ 1."""
    lr: float = field(default=3e-2, metadata=LEARNING_RATE)
    """Peak Adam learning rate, in (0, 10]."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """cosine: decay from lr to 0 over the steps (the paper's TMS runs); constant (the paper's resid-MLP runs)."""
    faithfulness_coeff: float = field(default=1.0, metadata=COEFFICIENT)
    """Weight of L_faith = Σ_l ‖W_l − Σ_c U_c V_cᵀ‖²_F / (number of decomposed parameters), in [0, 10^6]."""
    delta_component: bool = False
    """Add the delta component Δ_l = W_l − Σ_c U_{l,c} V_{l,c}ᵀ to every masked forward with its own mask
    m_Δ = r ~ U[0, 1] per input (importance 0: never needed, always at risk), in both stochastic reconstruction
    losses (the later reference code's ``use_delta_component``). With every mask 1 the masked model is then the
    target exactly, and the part of W the subcomponents miss is penalised where the data reaches it (Δ x ≠ 0 changes
    the output at random) instead of everywhere in parameter space; the reference code then drops the faithfulness
    loss (``faithfulness_coeff`` 0)."""
    recon_coeff: float = field(default=1.0, metadata=COEFFICIENT)
    """Weight of the stochastic reconstruction loss (every target masked at once), in [0, 10^6]."""
    recon_layerwise_coeff: float = field(default=1.0, metadata=COEFFICIENT)
    """Weight of the layerwise stochastic reconstruction loss (one target masked at a time), in [0, 10^6]; 0 = off."""
    importance_coeff: float = field(default=3e-2, metadata=COEFFICIENT)
    """Weight of the importance-minimality loss Σ_l Σ_c |g_c|^p (mean over inputs), in [0, 10^6]."""
    pnorm: float = field(
        default=1.0,
        metadata=in_range(
            0, 10, lo_open=True, why="|g|^p of a g in [0, 1] vanishes for a large p, and every subcomponent dies"
        ),
    )
    """p of the importance-minimality loss, in (0, 10]."""
    n_mask_samples: int = field(default=1, metadata=COUNT)
    """Stochastic masks r ~ U[0,1]^C drawn per input and step (S); ≥ 1."""
    leak: float = field(default=0.01, metadata=SLOPE)
    """Slope below 0 of the lower-leaky hard sigmoid (masks; backward pass only), in [0, 1]."""
    upper_leak: float = field(default=1.0, metadata=SLOPE)
    """Slope above 1 of the upper-leaky hard sigmoid (importance minimality), in [0, 1]; the paper uses 0.01 (see above)."""
    warmup_steps: int = field(default=200, metadata=NON_NEGATIVE)
    """Faithfulness-only warm-up steps before the main loop (so Σ_c U_c V_cᵀ starts close to W); ≥ 0."""
    warmup_lr: float = field(default=1e-2, metadata=LEARNING_RATE)
    """Learning rate of the warm-up, in (0, 10]."""
    output_loss: Literal["auto", "mse", "kl"] = "auto"
    """Distance between masked and target outputs: mse (Σ over the last dim, mean over rows), kl (logits), auto = by model."""
    alive_threshold: float = field(default=0.1, metadata=in_range(0, 1, hi_open=True))
    """A subcomponent is alive when its causal importance exceeds this on some evaluation input; in [0, 1)."""
    checkpoint_every: int = field(default=500, metadata=NON_NEGATIVE)
    """Steps between atomic checkpoints (0 = only at the end)."""
    seed: int = 0
    """Seed of the initialisation, the masks and (for toy models) the data."""
    restarts: int = field(default=1, metadata=COUNT)
    """Random starts (SPD seeds seed, seed+1, …); the one with the lowest held-out SPD loss is kept (not in the paper;
    ``mechscope decompose --model toy:tms`` defaults to 3, ``SPD_DEFAULTS``)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.targets:
            raise UsageError("--targets needs at least one module-name pattern (use '*' for every Linear/Embedding)")
