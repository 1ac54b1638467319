"""Rank-one subcomponents of one weight matrix and their causal-importance functions.

Shapes: C subcomponents, d_in / d_out the weight's input / output width (a Linear's ``weight`` is
[d_out, d_in]; transformers' Conv1D computes x W with ``weight`` [d_in, d_out], used transposed; an Embedding's
``weight`` [V, d] is used as the map from one-hot tokens, d_in = V, d_out = d),
H the hidden width of a causal-importance MLP, ``...`` any leading dims (rows, positions).

- W ≈ Σ_c U_c V_cᵀ with V [d_in, C], U [C, d_out]: subcomponent c is the rank-one matrix U_c V_cᵀ [d_out, d_in].
- Inner activation of subcomponent c on input x: a_c = V_cᵀ x (for an Embedding, the row V[token]).
- Causal importance g_c(x) = σ(γ_c(a_c)) with γ_c: ℝ → ℝ a one-hidden-layer GELU MLP, one per subcomponent
  (the paper's "scalar" CI function); σ is a leaky hard sigmoid:
    lower-leaky  σ_l(z) = clamp(z, 0, 1), gradient slope leak below 0 — used for the masks;
    upper-leaky  σ_u(z) = 0 (z < 0), z (0 ≤ z ≤ 1), 1 + leak·(z − 1) (z > 1) — used for importance minimality.
- Masked forward: y = Σ_c m_c U_c (V_cᵀ x) (+ the module's bias, which is not decomposed); with the delta
  component (:class:`~mechscope.decompose.spd.SPD`) also + m_Δ Δ x, Δ = W − Σ_c U_c V_cᵀ (:meth:`Components.apply`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lower_leaky_hard_sigmoid(z: Tensor, leak: float) -> Tensor:
    """σ_l(z) = clamp(z, 0, 1) in the forward pass, with slope ``leak`` below 0 in the backward pass.

    Departure: the paper's σ_l leaks in the forward pass too (leak·z below 0), which lets a very negative z
    give a negative importance and a mask m = g + (1 − g)r outside [0, 1]; we measured noisier training with
    it on TMS. Leaking only the gradient keeps every mask in [0, 1] and still revives a subcomponent whose
    importance went below 0 (as the later reference code does)."""
    below = (z < 0).to(z.dtype)
    return z.clamp(0.0, 1.0) + leak * below * (z - z.detach())


def upper_leaky_hard_sigmoid(z: Tensor, leak: float) -> Tensor:
    """σ_u(z): 0 below 0, z on [0, 1], 1 + leak·(z − 1) above (the paper's upper-leaky hard sigmoid)."""
    return torch.where(z > 1, 1 + leak * (z - 1), z.clamp(min=0.0))


class CIFunctions(nn.Module):
    """C independent scalar MLPs γ_c: a_c → GELU(a_c w1_c + b1_c) · w2_c + b2_c. Parameters [C, H], [C], float32
    on ``device`` (drawn from the cpu ``generator``, then moved: the same start on every device)."""

    def __init__(self, C: int, hidden: int, generator: torch.Generator, device: torch.device | None = None):
        super().__init__()
        self.w1 = nn.Parameter(
            torch.randn(C, hidden, generator=generator).to(device) * math.sqrt(2.0)
        )  # fan-in 1, He init
        self.b1 = nn.Parameter(torch.zeros(C, hidden, device=device))
        self.w2 = nn.Parameter(torch.randn(C, hidden, generator=generator).to(device) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(C, device=device))

    def forward(self, inner: Tensor) -> Tensor:
        """Pre-sigmoid importances [..., C] from inner activations [..., C]."""
        h = F.gelu(inner[..., None] * self.w1 + self.b1)  # [..., C, H]
        return (h * self.w2).sum(-1) + self.b2


class Components(nn.Module):
    """The C rank-one subcomponents of one target weight and their CI functions, float32 on the weight's device."""

    def __init__(self, matrix: Tensor, C: int, ci_hidden: int, embedding: bool, generator: torch.Generator):
        """``matrix`` [d_out, d_in] is the target weight in the orientation y = matrix · x. ``generator`` is a cpu
        generator: the start is drawn there and moved to ``matrix.device``, so it is the same on every device."""
        super().__init__()
        d_out, d_in = matrix.shape
        self.embedding = embedding
        V = torch.randn(d_in, C, generator=generator).to(matrix.device)
        U = torch.randn(C, d_out, generator=generator).to(matrix.device)
        V, U = V / V.norm(dim=0, keepdim=True), U / U.norm(dim=1, keepdim=True)
        # Scale each pair by its overlap with the target, uᵀ W v, so Σ_c U_c V_cᵀ starts at W's scale
        # (the faithfulness warm-up then makes it exact).
        U = U * torch.einsum("co,oi,ic->c", U, matrix.float(), V)[:, None]
        self.V = nn.Parameter(V)
        self.U = nn.Parameter(U)
        self.ci = CIFunctions(C, ci_hidden, generator, matrix.device)

    @property
    def C(self) -> int:
        return self.U.shape[0]

    def weight(self) -> Tensor:
        """Σ_c U_c V_cᵀ [d_out, d_in]."""
        return self.U.T @ self.V.T

    def subcomponents(self) -> Tensor:
        """[C, d_out, d_in]: each U_c V_cᵀ."""
        return torch.einsum("co,ic->coi", self.U, self.V)

    def inner(self, x: Tensor) -> Tensor:
        """a = Vᵀx [..., C] (x [..., d_in] floats, or [...] token ids for an Embedding)."""
        return self.V[x] if self.embedding else x @ self.V

    def apply_matrix(self, x: Tensor, matrix: Tensor) -> Tensor:
        """matrix · x [..., d_out] for a dense ``matrix`` [d_out, d_in] read as this layer reads x (for an Embedding,
        the column of token x)."""
        return matrix.T[x] if self.embedding else x @ matrix.T

    def importances(self, x: Tensor, leak: float, upper_leak: float) -> tuple[Tensor, Tensor]:
        """(g_lower, g_upper) [..., C]: lower-leaky (masks) and upper-leaky (minimality) causal importances."""
        z = self.ci(self.inner(x))
        return lower_leaky_hard_sigmoid(z, leak), upper_leaky_hard_sigmoid(z, upper_leak)

    @torch.no_grad()
    def start_at(self, pieces: Tensor, rest_scale: float = 1e-3) -> None:
        """Set subcomponents 0 … F−1 to the rank-one matrices ``pieces`` [F, d_out, d_in] (each u vᵀ from its top
        singular pair, ‖v‖ = 1) and scale the others' U by ``rest_scale``: a start at a known answer, to compare
        SPD's loss there with where a random start ends (not a method: it needs the truth)."""
        F = pieces.shape[0]
        if F > self.C:
            raise ValueError(f"{F} pieces but only C = {self.C} subcomponents")
        u, s, vh = torch.linalg.svd(pieces.float())
        self.U[:F] = u[:, :, 0] * s[:, :1]
        self.V[:, :F] = vh[:, 0, :].T
        self.U[F:] *= rest_scale

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Σ_c m_c U_c (V_cᵀ x) [..., d_out] (no bias)."""
        a = self.inner(x)
        return (a if mask is None else a * mask) @ self.U
