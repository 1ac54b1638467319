"""Latent dashboards: one streaming pass of held-out rows through the encoder, then per-latent facts.

:func:`scan_latents` reads every held-out row once and keeps, for every latent, the firing count, the
top-k activations with their row numbers and a histogram of |activation| on fixed log-spaced bins
(fixed, so no second pass is needed to find each latent's range); the reconstruction metrics of
:class:`~mechscope.evals.metrics.ReconstructionStats` come out of the same pass.
:func:`build_dashboards` turns the scan into :class:`LatentDashboard` records for the chosen latents:
top-activating contexts (the activating token marked), the histogram, firing density, and the tokens
whose logits the latent's decoder direction raises and lowers most: top/bottom of W_dec[i] @ W_Uᵀ,
through the unembedding alone (the final norm is left out, so the values are directions, not
calibrated logit changes; meaningful for residual-stream sites).

Shapes: B rows, d width, n latents, k top contexts, m chosen latents, V vocabulary, N contexts, T tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.evals.metrics import ReconstructionStats

# |activation| histogram bins: 20 per decade from 1e-6 to 1e6, shared by every latent.
_DECADES = (-6.0, 6.0)
_PER_DECADE = 20
N_BINS = int((_DECADES[1] - _DECADES[0]) * _PER_DECADE)


def bin_edges() -> Tensor:
    """[N_BINS + 1] edges of the shared log-spaced |activation| bins."""
    return torch.logspace(_DECADES[0], _DECADES[1], N_BINS + 1, dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class LatentScan:
    """Everything kept from one pass over the held-out rows, for all n latents."""

    rows: int
    """Held-out rows read."""
    fire_counts: Tensor
    """[n] rows on which each latent fired (code ≠ 0)."""
    top_values: Tensor
    """[k, n] largest activations of each latent, descending (−inf where fewer than k rows)."""
    top_rows: Tensor
    """[k, n] row numbers of those activations (−1 where none)."""
    hist: Tensor
    """[n, N_BINS] counts of |activation| of fired rows on :func:`bin_edges`."""
    act_sums: Tensor
    """[n] Σ activation over fired rows (float64)."""
    reconstruction: dict[str, float]
    """FVU, L0, dead fraction, … of decode(encode(x)) against x on the same rows."""

    @property
    def density(self) -> Tensor:
        """[n] fraction of rows on which each latent fired."""
        return self.fire_counts.double() / max(self.rows, 1)


@torch.no_grad()
def scan_latents(
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor] | None,
    batches: Iterable[Tensor],
    top_k: int = 8,
) -> LatentScan:
    """Stream ``batches`` of held-out rows [B, d], in row order, through ``encode`` ([B, d] → dense codes [B, n]).

    The scan runs where ``encode`` puts the codes (the rows follow them); the scan it returns is on the cpu, where the
    dashboards and plots read it."""
    stats = ReconstructionStats()
    edges_log = torch.log10(bin_edges())
    fire = top_v = top_r = hist = sums = None
    seen = 0
    for x in batches:
        codes = encode(x).float()  # [B, n]
        x, dev = x.to(codes.device), codes.device
        b, n = codes.shape
        if fire is None:
            fire = torch.zeros(n, dtype=torch.long, device=dev)
            top_v = torch.full((top_k, n), -math.inf, device=dev)
            top_r = torch.full((top_k, n), -1, dtype=torch.long, device=dev)
            hist = torch.zeros(n * N_BINS, dtype=torch.long, device=dev)
            sums = torch.zeros(n, dtype=torch.float64, device=dev)
            edges_log = edges_log.to(dev)
        assert top_v is not None and top_r is not None and hist is not None and sums is not None  # set with fire
        stats.update(x, decode(codes) if decode is not None else x, codes)
        fired = codes != 0
        fire += fired.sum(0)
        sums += codes.double().sum(0)
        # Top-k: this batch's best k per latent, merged with the running best (small [2k, n] tensors).
        bv, bi = torch.where(fired, codes, -math.inf).topk(min(top_k, b), dim=0)
        top_v, idx = torch.cat([top_v, bv]).topk(top_k, dim=0)
        top_r = torch.cat([top_r, seen + bi]).gather(0, idx)
        # Histogram: only fired entries, B·L0 of them, scattered into the flat [n · N_BINS] counts.
        r_idx, lat = fired.nonzero(as_tuple=True)
        logs = torch.log10(codes[r_idx, lat].abs().double())
        bins = (torch.bucketize(logs, edges_log) - 1).clamp(0, N_BINS - 1)
        hist.index_add_(0, lat * N_BINS + bins, torch.ones_like(bins))
        seen += b
    if fire is None:
        raise ValueError("scan_latents: no held-out rows")
    assert top_v is not None and top_r is not None and hist is not None and sums is not None  # set with fire
    top_r = torch.where(torch.isfinite(top_v), top_r, torch.full_like(top_r, -1))
    rec = (
        stats.results()
        if decode is not None
        else {k: v for k, v in stats.results().items() if k in ("rows", "l0", "l1", "dead_fraction", "dense_fraction")}
    )
    return LatentScan(seen, fire.cpu(), top_v.cpu(), top_r.cpu(), hist.view(-1, N_BINS).cpu(), sums.cpu(), rec)


def choose_latents(
    scan: LatentScan, n_top: int = 64, n_random: int = 16, seed: int = 0, extra: Iterable[int] = ()
) -> list[int]:
    """The ``n_top`` most often firing latents, then ``n_random`` others drawn from the alive ones
    (seeded), then any ``extra`` ids; no duplicates, in that order."""
    order = torch.argsort(scan.fire_counts, descending=True, stable=True)
    top = [int(i) for i in order[:n_top] if scan.fire_counts[i] > 0]
    chosen = set(top)
    alive = [int(i) for i in torch.nonzero(scan.fire_counts > 0).flatten() if int(i) not in chosen]
    g = torch.Generator().manual_seed(seed)
    rand = [alive[int(j)] for j in torch.randperm(len(alive), generator=g)[:n_random]]
    out = top + sorted(rand)
    for i in extra:
        if int(i) not in out:
            out.append(int(i))
    return out


def random_live_latents(scan: LatentScan, n: int, seed: int = 0) -> list[int]:
    """``n`` latents drawn uniformly at random (seeded) from those that fired on the scanned rows, sorted.

    The report's "latent directions" are these: the most frequent latents are not a sample of the
    dictionary (they lean towards dense, low-kurtosis directions), so comparing them with random and
    neuron directions would say something about frequency, not about latents."""
    alive = torch.nonzero(scan.fire_counts > 0).flatten()
    g = torch.Generator().manual_seed(seed)
    return sorted(int(alive[j]) for j in torch.randperm(len(alive), generator=g)[:n])


@dataclass(frozen=True)
class Context:
    """One top-activating token and the text around it."""

    value: float
    """The latent's activation on the marked token."""
    row: int
    context: int
    position: int
    before: tuple[str, ...]
    token: str
    after: tuple[str, ...]


@dataclass(frozen=True)
class LatentDashboard:
    """What a reader needs to judge one latent."""

    index: int
    density: float
    """Fraction of held-out rows on which it fired."""
    mean_when_fired: float
    max_value: float
    contexts: tuple[Context, ...]
    hist_edges: tuple[float, ...]
    """Edges of the |activation| histogram, cropped to the occupied range (log-spaced)."""
    hist_counts: tuple[int, ...]
    logits_up: tuple[tuple[str, float], ...]
    """Tokens whose logits W_dec[i] raises most, with W_dec[i] @ W_U[t]."""
    logits_down: tuple[tuple[str, float], ...]
    """Tokens it lowers most."""


def _cropped_hist(counts: Tensor, max_bars: int = 40) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Crop the shared bins to the occupied range and merge neighbours down to ≤ max_bars bars."""
    nz = torch.nonzero(counts).flatten()
    if nz.numel() == 0:
        return (), ()
    lo = int(nz[0])
    seg = counts[lo : int(nz[-1]) + 1]
    merge = math.ceil(seg.numel() / max_bars)
    bars = math.ceil(seg.numel() / merge)
    merged = torch.nn.functional.pad(seg, (0, bars * merge - seg.numel())).view(bars, merge).sum(1)
    edges = bin_edges()
    return (tuple(float(edges[min(lo + j * merge, N_BINS)]) for j in range(bars + 1)), tuple(int(v) for v in merged))


def logit_effects(
    W_dec_rows: Tensor, W_U: Tensor, k: int, centred: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The one logit-effects formula (SAE dashboards and attribution-graph node cards): the top and bottom
    ``k`` (at most V) of E = W_dec_rows @ W_Uᵀ in float32; ``centred``: E minus its mean over the vocabulary, per
    row (the ranking is the same; the values read as effects relative to the average token).
    W_dec_rows: [m, d] directions written into the residual stream, W_U: [V, d].
    Returns (up_values, up_ids, down_values, down_ids), each [m, min(k, V)]."""
    eff = W_dec_rows.float() @ W_U.float().T  # [m, V]
    if centred:
        eff = eff - eff.mean(dim=1, keepdim=True)
    k = min(k, W_U.shape[0])
    up = eff.topk(k, dim=1)
    down = eff.topk(k, dim=1, largest=False)
    return up.values, up.indices, down.values, down.indices


def build_dashboards(
    scan: LatentScan,
    latents: list[int],
    tokens: Tensor,
    position: Callable[[int], tuple[int, int]],
    token_text: Callable[[int], str],
    W_dec: Tensor | None = None,
    W_U: Tensor | None = None,
    before: int = 12,
    after: int = 4,
    n_logit_tokens: int = 8,
) -> list[LatentDashboard]:
    """Dashboards of ``latents``. tokens: [N, T] ids of the held-out contexts; ``position(row)`` gives
    (context, position) of a held-out row; ``token_text(id)`` the token's text. Logit effects need
    W_dec [n, d] and W_U [V, d] of the same d; otherwise they are left empty."""
    effects = None
    if W_dec is not None and W_U is not None and W_dec.shape[1] == W_U.shape[1] and latents and n_logit_tokens > 0:
        effects = logit_effects(W_dec[latents], W_U, min(n_logit_tokens, W_U.shape[0]))
    out = []
    for j, i in enumerate(latents):
        ctxs = []
        for v, r in zip(scan.top_values[:, i].tolist(), scan.top_rows[:, i].tolist()):
            if r < 0:
                continue
            c, p = position(r)
            ids = tokens[c].tolist()
            ctxs.append(
                Context(
                    float(v),
                    int(r),
                    int(c),
                    int(p),
                    tuple(token_text(t) for t in ids[max(0, p - before) : p]),
                    token_text(ids[p]),
                    tuple(token_text(t) for t in ids[p + 1 : p + 1 + after]),
                )
            )
        fired = int(scan.fire_counts[i])
        edges, counts = _cropped_hist(scan.hist[i])
        up: tuple[tuple[str, float], ...] = ()
        down: tuple[tuple[str, float], ...] = ()
        if effects is not None:
            uv, ui, dv, di = (t[j].tolist() for t in effects)
            up = tuple((token_text(t), float(v)) for t, v in zip(ui, uv))
            down = tuple((token_text(t), float(v)) for t, v in zip(di, dv))
        out.append(
            LatentDashboard(
                index=int(i),
                density=float(scan.density[i]),
                mean_when_fired=float(scan.act_sums[i]) / fired if fired else 0.0,
                max_value=ctxs[0].value if ctxs else 0.0,
                contexts=tuple(ctxs),
                hist_edges=edges,
                hist_counts=counts,
                logits_up=up,
                logits_down=down,
            )
        )
    return out
