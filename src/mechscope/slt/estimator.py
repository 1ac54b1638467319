"""The local learning coefficient estimator: chains of localised SGLD around w*, and λ̂.

Shape letters: **C** chains, **D** draws per chain, **n** rows in the data set, **B** rows per batch.

    λ̂ = nβ · (E_w[L_n(w)] − L_n(w*))

estimated per chain c as λ̂_c = nβ · (mean over the D draws of L_b(w_t) − L_n(w*)), where L_b(w_t) is the
minibatch mean loss at the draw (a fresh batch each step, so it is unbiased for L_n(w_t)) and L_n(w*)
is the mean loss over the **full** data set, computed once (devinterp takes it from one batch, which
makes repeated estimates disagree by nβ × that batch's noise). λ̂ is the mean of the λ̂_c and its
standard error SE = sd(λ̂_c) / √C across chains (independent chains, so autocorrelation inside a chain
does not shrink it). nβ defaults to n / ln n.

The chains sample the localised tempered posterior p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²) (:mod:`mechscope.slt.sgld`).
With γ = 0 (unlocalised SGLD, as in devinterp's sampler-accuracy tests) it is p(w) ∝ exp(−nβ L_n(w)), the
same formula for λ̂ holds and, on a quadratic loss ½ (w − w*)ᵀ H (w − w*) with H positive definite in d
weights, λ̂ → d/2 exactly (at γ > 0: Σ_i nβh_i / (2(nβh_i + γ)), biased low). Nothing then pulls a chain
back to w*: on a degenerate or non-convex loss it can drift away, which the escape test flags.

A chain runs ``burn_in`` steps, then records one draw every ``thin`` steps, ``draws`` times. Every
``mala_every``-th draw it also evaluates the MALA acceptance probability of that step (with ``metropolis`` every
step is evaluated so, and kept only with that probability; the diagnostic then records it on the same draws) (one extra forward
and backward pass on the same batch, see :mod:`mechscope.slt.diagnostics`), and five times as often (every
max(1, ⌊mala_every/5⌋)-th draw; one pass over the parameters, no model call) the distance ‖w − w*‖, so the
escape test has enough samples to be judged.

:class:`LLCEstimator` is the accumulator (``update`` / ``finalize`` / ``results``); :func:`estimate_llc`
runs the chains on a model, a loss function and data; the model's weights and mode are restored after.

Under torchrun (a :class:`mechscope.distributed.World` of N ranks) rank r runs chains r, r+N, … (each chain's
batches and noise come from seed·1000 + c, whatever N is); every rank's draws are gathered (under the
collective timeout) and every rank returns the λ̂ of all C chains, the one a single process computes.
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from mechscope.config import check_ranges, in_range
from mechscope.distributed import World
from mechscope.errors import MechscopeError, UsageError
from mechscope.slt.diagnostics import chain_flags, chain_warnings, mala_accept_prob, split_rhat
from mechscope.slt.known import default_nbeta
from mechscope.slt.sgld import SAMPLERS, sq_distance

LossFn = Callable[[nn.Module, Any], Tensor]
"""loss_fn(model, batch) → the scalar *mean* loss of the batch (a negative log-likelihood per row)."""


GAMMA = in_range(0, 1e6, lo_open=True)
"""Range of a localisation strength γ that the calibration sweeps: (0, 10^6]."""
LOCALISATION = in_range(0, 1e6)
"""Range of the localisation strength γ of a run: [0, 10^6]; 0 is unlocalised SGLD."""


@dataclass(frozen=True)
class LLCConfig:
    """How the chains are run."""

    sampler: Literal["sgld", "rmsprop_sgld"] = "sgld"
    """Langevin sampler: plain localised SGLD or the RMSProp-preconditioned one (pSGLD)."""
    epsilon: float = field(default=1e-4, metadata=in_range(0, 1e3, lo_open=True))
    """Step size ε of the sampler, in (0, 1000] (the Langevin noise has variance ε per weight)."""
    gamma: float = field(default=100.0, metadata=LOCALISATION)
    """Localisation strength γ: the pull (γ/2)‖w − w*‖² that keeps the chain near w*; in [0, 10^6] (0: unlocalised
    SGLD, which devinterp's sampler-accuracy tests use; only the escape test then keeps the chain near w*)."""
    nbeta: float | None = field(default=None, metadata=in_range(0, 1e12, lo_open=True))
    """Inverse temperature times n, nβ, in (0, 10^12] (none: n / ln n with n the rows of the data set)."""
    chains: int = 4
    """Independent chains (the standard error comes from their spread, so at least 2 are advised)."""
    draws: int = 200
    """Draws recorded per chain after burn-in."""
    burn_in: int = 100
    """Steps run before the first draw."""
    thin: int = 1
    """Steps between draws."""
    batch_size: int = 256
    """Rows per SGLD minibatch."""
    mala_every: int = 10
    """Evaluate the MALA acceptance every this many draws, and the distance from w* five times as often (0: never)."""
    seed: int = 0
    """Seed of the batches and the Langevin noise (chain c uses seed·1000 + c)."""
    metropolis: bool = False
    """Metropolis-adjusted steps (MALA): every step's proposal is accepted with the MALA probability on the same
    batch at both ends, else the chain stays where it was (one more forward and backward pass per step). The chain
    then cannot run away where the curvature grows along a valley (docs/llc.md, rule v4); off: plain SGLD. With
    ``rmsprop_sgld`` the proposal density uses the step's preconditioner both ways, so the correction is approximate."""
    workers: int = 0
    """Chains run at once, each in its own thread on its own copy of the model with single-threaded operations
    (0: automatic — as many as chains and torch threads allow when the model has ≥ 10,000 parameters, else 1)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise UsageError(f"epsilon must be > 0, got {self.epsilon}: pass a positive epsilon (or calibrate)")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise UsageError(f"gamma must be ≥ 0 (0: unlocalised SGLD), got {self.gamma}")
        if self.nbeta is not None and not (math.isfinite(self.nbeta) and self.nbeta > 0):
            raise UsageError(f"nbeta must be > 0 (or omitted for n/ln n), got {self.nbeta}")
        for name in ("chains", "thin", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.draws < 6:
            raise UsageError(f"draws must be ≥ 6 (the diagnostics split the trace), got {self.draws}")
        if self.burn_in < 0 or self.mala_every < 0 or self.workers < 0:
            raise UsageError("burn_in, mala_every and workers must be ≥ 0")


@dataclass(frozen=True, eq=False)
class LLCResult:
    """λ̂ with its standard error and the diagnostics of the chains."""

    llc_hat: float
    llc_se: float
    llc_chains: np.ndarray  # [C]
    init_loss: float
    nbeta: float
    n: int
    loss_traces: np.ndarray  # [C, D]
    distances: np.ndarray  # [C, D'] (every max(1, mala_every // 5)-th draw)
    mala_accept: float
    rhat: float
    frac_negative: float
    warnings: tuple[str, ...]
    config: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    """The chains each per-chain check flagged (:func:`mechscope.slt.diagnostics.chain_flags`)."""

    @property
    def llc_trace(self) -> np.ndarray:
        """Running λ̂ per chain, [C, D]: nβ · (cumulative mean of the losses − L_n(w*))."""
        t = self.loss_traces
        return self.nbeta * (np.cumsum(t, axis=1) / np.arange(1, t.shape[1] + 1) - self.init_loss)

    def summary(self) -> dict[str, Any]:
        """The numbers without the traces (JSON-ready)."""
        return {
            "llc_hat": self.llc_hat,
            "llc_se": self.llc_se,
            "llc_chains": [float(v) for v in self.llc_chains],
            "init_loss": self.init_loss,
            "nbeta": self.nbeta,
            "n": self.n,
            "diagnostics": {
                "mala_accept": self.mala_accept,
                "rhat": self.rhat,
                "frac_negative": self.frac_negative,
                "warnings": list(self.warnings),
                "flags": self.flags,
                "healthy": not self.warnings,
            },
            "config": self.config,
        }

    def headline(self) -> str:
        return (
            f"λ̂ = {self.llc_hat:.4g} ± {self.llc_se:.2g} (SE over {len(self.llc_chains)} chains, nβ = {self.nbeta:.4g})"
        )


class LLCEstimator:
    """Accumulates draws: ``update(chain, draw, loss)`` per draw, ``add_mala`` / ``add_distance`` on
    diagnostic draws, then ``finalize()`` once and ``results()``."""

    def __init__(self, chains: int, draws: int, nbeta: float, init_loss: float, n: int = 0, config: dict | None = None):
        self.nbeta, self.init_loss, self.n, self.config = float(nbeta), float(init_loss), n, dict(config or {})
        self.losses = np.full((chains, draws), np.nan)
        self.mala: list[list[float]] = [[] for _ in range(chains)]
        self.dist: list[list[float]] = [[] for _ in range(chains)]
        self._result: LLCResult | None = None

    def update(self, chain: int, draw: int, loss: float) -> None:
        self.losses[chain, draw] = loss

    def add_mala(self, chain: int, prob: float) -> None:
        self.mala[chain].append(prob)

    def add_distance(self, chain: int, distance: float) -> None:
        self.dist[chain].append(distance)

    def share(self, chains: Sequence[int]) -> dict[int, tuple[np.ndarray, list[float], list[float]]]:
        """What ``chains`` recorded (losses [D], MALA probabilities, distances), by chain: one rank's part."""
        return {c: (self.losses[c].copy(), list(self.mala[c]), list(self.dist[c])) for c in chains}

    def absorb(self, part: dict[int, tuple[np.ndarray, list[float], list[float]]]) -> None:
        """Take in the chains another rank ran (:meth:`share`)."""
        for c, (losses, mala, dist) in part.items():
            self.losses[c], self.mala[c], self.dist[c] = losses, list(mala), list(dist)

    def finalize(self) -> LLCResult:
        t = self.losses
        per_chain = self.nbeta * (t.mean(axis=1) - self.init_loss)  # [C]
        C = len(per_chain)
        se = float(per_chain.std(ddof=1) / math.sqrt(C)) if C > 1 else float("nan")
        mala_all = [p for ps in self.mala for p in ps]
        mala = float(np.mean(mala_all)) if mala_all else float("nan")
        width = min((len(d) for d in self.dist), default=0)
        dist = np.array([d[:width] for d in self.dist]) if width else np.zeros((C, 0))
        rhat = split_rhat(t) if C > 1 else float("nan")
        flags = chain_flags(t, dist, self.init_loss, self.nbeta)
        warn = chain_warnings(flags, rhat, mala)
        self._result = LLCResult(
            llc_hat=float(per_chain.mean()),
            llc_se=se,
            llc_chains=per_chain,
            init_loss=self.init_loss,
            nbeta=self.nbeta,
            n=self.n,
            loss_traces=t.copy(),
            distances=dist,
            mala_accept=mala,
            rhat=rhat,
            frac_negative=float(np.mean(t < self.init_loss)),
            warnings=tuple(warn),
            config=self.config,
            flags=flags,
        )
        return self._result

    def results(self) -> LLCResult:
        if self._result is None:
            raise RuntimeError("call finalize() before results()")
        return self._result


# --- data: batches without per-row Python work -------------------------------------------------------


class TensorBatches(Dataset):
    """Rows of a tuple of tensors, indexed by a whole LongTensor of row numbers at once (``index_select``,
    4× faster than ``t[rows]`` for 256 rows of 784 floats on one core)."""

    def __init__(self, tensors: Sequence[Tensor]):
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, rows: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.index_select(0, rows) for t in self.tensors)


class RandomBatches(Sampler):
    """Endless batches of row numbers: consecutive slices of fresh random permutations (drop last)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __iter__(self) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            perm = torch.randperm(self.n, generator=g)
            for lo in range(0, self.n - self.batch_size + 1, self.batch_size):
                yield perm[lo : lo + self.batch_size]


def tensor_loader(tensors: Sequence[Tensor], batch_size: int, seed: int) -> DataLoader:
    """A DataLoader over ``tensors`` [n, …] yielding endless random batches, one index tensor per batch."""
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise UsageError("the data tensors have different numbers of rows: " + ", ".join(str(len(t)) for t in tensors))
    if n < batch_size:
        raise UsageError(
            f"the data set has {n} rows, fewer than the batch size {batch_size}: pass `batch_size` ≤ {n} or more data"
        )
    return DataLoader(TensorBatches(tensors), sampler=RandomBatches(n, batch_size, seed), batch_size=None)


def _rows(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(first)


@torch.no_grad()
def full_loss(model: nn.Module, loss_fn: LossFn, data: Sequence[Tensor] | DataLoader, batch_size: int = 4096) -> float:
    """L_n(w) over the whole data set: the row-weighted mean of the batch mean losses (float64 sum)."""
    if isinstance(data, DataLoader):
        batches: Any = data
    else:
        n = len(data[0])
        batches = (tuple(t[lo : lo + batch_size] for t in data) for lo in range(0, n, batch_size))
    total, rows = 0.0, 0
    for b in batches:
        k = _rows(b)
        total += float(loss_fn(model, b)) * k
        rows += k
    if rows == 0:
        raise UsageError("the data set is empty: pass data with at least one batch")
    return total / rows


def _endless(loader: DataLoader) -> Iterator[Any]:
    while True:
        got = False
        for b in loader:
            got = True
            yield b
        if not got:
            raise UsageError("the data loader yields no batches")


def estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor] | DataLoader,
    cfg: LLCConfig = LLCConfig(),
    *,
    progress: bool = True,
    world: World | None = None,
) -> LLCResult:
    """Run ``cfg.chains`` chains around the model's current weights (w*) and return λ̂ and diagnostics.

    ``data`` is a tuple of tensors [n, …] (batches are drawn by :func:`tensor_loader`) or any DataLoader
    (then n = ``len(loader.dataset)``, L_n(w*) is one pass over it, and ``cfg.batch_size`` is not used).
    ``world``: the ranks of a torchrun job that share the chains (module docstring); None runs them all here."""
    world = world or World()
    params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError(
            "the model has no trainable parameters (requires_grad=True): there is nothing to sample; "
            "unfreeze the parameters whose λ you want"
        )
    if isinstance(data, DataLoader):
        n = len(data.dataset)  # type: ignore[arg-type]
        make_batches: Callable[[int], Iterator[Any]] = lambda seed: _endless(data)  # noqa: E731
    else:
        n = len(data[0])
        tensor_loader(data, cfg.batch_size, 0)  # checks sizes before any work
        make_batches = lambda seed: iter(tensor_loader(data, cfg.batch_size, seed))  # noqa: E731
    nbeta = cfg.nbeta if cfg.nbeta is not None else default_nbeta(n)
    was_training = model.training
    model.eval()
    w_star = [p.detach().clone() for p in params]
    try:
        init_loss = full_loss(model, loss_fn, data)
        if not math.isfinite(init_loss):
            raise MechscopeError(
                f"the loss at w* is {init_loss} on the full data set: λ̂ needs a finite loss at the "
                "trained weights; check the model, the data and the loss function"
            )
        from mechscope.config import to_dict

        mine = world.share(cfg.chains)
        replicas = _replicas(
            model, params, max(1, min(chain_workers(cfg, params), len(mine))), explicit=cfg.workers > 0
        )
        est = LLCEstimator(
            cfg.chains,
            cfg.draws,
            nbeta,
            init_loss,
            n,
            to_dict(cfg)
            | {"nbeta": nbeta, "workers_used": len(replicas)}
            | ({"ranks": world.size} if world.size > 1 else {}),
        )
        with tqdm(
            total=len(mine) * (cfg.burn_in + cfg.draws * cfg.thin),
            desc="SGLD",
            disable=not (progress and world.is_main),
            leave=False,
        ) as bar:
            _run_chains(replicas, w_star, loss_fn, make_batches, cfg, nbeta, est, bar, mine)
        if world.size > 1:
            for part in world.gather(est.share(mine), "the gather of every rank's SGLD chains"):
                est.absorb(part)
        return est.finalize()
    finally:
        with torch.no_grad():
            for p, w in zip(params, w_star):
                p.copy_(w)
                p.grad = None
        model.train(was_training)


PARALLEL_MIN_PARAMS = 10_000
"""Below this many parameters a step is mostly Python work, which holds the GIL, so chains in threads run slower:
4 chains × 1,000 steps, 2 threads, 2026-11-24: regular:8 (8 parameters) 1.9–2.2k steps/s side by side against
3.8–4.0k one after another, rrr:8,3,4,0 (36) 1.5–1.8k against 3.0–3.4k; the 269k-parameter MLP of
``bench/llc.py --workers-ab`` gains 1.23×. The automatic choice runs small models' chains one at a time."""


def chain_workers(cfg: LLCConfig, params: Sequence[Tensor]) -> int:
    """How many chains run at once: ``cfg.workers`` if set (at most the chains), else min(chains, torch's
    threads) for a CPU model with ≥ :data:`PARALLEL_MIN_PARAMS` parameters, else 1."""
    if cfg.workers:
        return min(cfg.workers, cfg.chains)
    if params[0].device.type != "cpu" or sum(p.numel() for p in params) < PARALLEL_MIN_PARAMS:
        return 1
    return max(1, min(cfg.chains, torch.get_num_threads()))


def _replicas(model: nn.Module, params: list[Tensor], k: int, explicit: bool) -> list[tuple[nn.Module, list[Tensor]]]:
    """The model and k − 1 deep copies of it (at w*), each with its trainable parameters in the same order."""
    out = [(model, params)]
    try:
        for _ in range(k - 1):
            m = copy.deepcopy(model)
            out.append((m, [p for p in m.parameters() if p.requires_grad]))
    except Exception as e:  # noqa: BLE001 - any failure to copy a user's model
        why = f"copy.deepcopy of the model failed ({type(e).__name__}: {e})"
        if explicit:
            raise UsageError(
                f"workers={k} runs each chain on its own copy of the model, but {why}: pass `workers`=1"
            ) from e
        warnings.warn(f"the chains run one at a time: {why}; set workers=1 to choose this", stacklevel=3)
        return out[:1]
    return out


def _run_chains(
    replicas: list[tuple[nn.Module, list[Tensor]]],
    w_star: list[Tensor],
    loss_fn: LossFn,
    make_batches: Callable[[int], Iterator[Any]],
    cfg: LLCConfig,
    nbeta: float,
    est: LLCEstimator,
    bar,
    chains: Sequence[int],
) -> None:
    """Every chain of ``chains``: one after another on one replica, or spread over one thread per replica (the
    j-th of them on replica j mod k) with torch's operations single-threaded meanwhile, so that each core runs a whole chain — small
    matrix products use one core better than two, and the noise draws run side by side. Each chain has its own
    batch and noise generators, so λ̂ does not depend on the schedule (up to float rounding: one thread sums in
    another order than two). The first failing chain stops the others and its error is raised."""
    lock = threading.Lock()

    def tick(k: int) -> None:
        with lock:
            bar.update(k)

    stop = threading.Event()

    def worker(r: int) -> None:
        model, params = replicas[r]
        for c in chains[r :: len(replicas)]:
            _run_chain(
                model, params, w_star, loss_fn, make_batches(cfg.seed * 1000 + c), cfg, nbeta, c, est, tick, stop
            )

    if len(replicas) == 1:
        worker(0)
        return
    with _single_threaded_ops(), ThreadPoolExecutor(len(replicas), thread_name_prefix="sgld-chain") as pool:
        futures = [pool.submit(worker, r) for r in range(len(replicas))]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # a failed chain (or Ctrl-C here) stops the others; after a clean finish it changes nothing
            stop.set()
        for f in futures:
            f.result()


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """torch's intra-op threads set to 1 while any side-by-side run is active, restored when the last one ends
    (a count, so that estimates run from several threads at once do not restore each other's setting)."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _U(loss: float, params: list[Tensor], w_star: list[Tensor], nbeta: float, gamma: float) -> float:
    """U(w) = nβ·L_b(w) + (γ/2)·‖w − w*‖²."""
    return nbeta * loss + gamma / 2 * sq_distance(params, w_star)


def _run_chain(
    model: nn.Module,
    params: list[Tensor],
    w_star: list[Tensor],
    loss_fn: LossFn,
    batches: Iterator[Any],
    cfg: LLCConfig,
    nbeta: float,
    chain: int,
    est: LLCEstimator,
    tick: Callable[[int], None],
    stop: threading.Event,
) -> None:
    """One chain from w*: burn-in, then draws (MALA every mala_every-th draw, the distance 5× as often).
    ``tick(k)`` reports k steps done; the chain returns early once ``stop`` is set."""
    with torch.no_grad():
        for p, w in zip(params, w_star):
            p.copy_(w)
    gen = torch.Generator(device=params[0].device).manual_seed(cfg.seed * 1000 + chain)
    opt = SAMPLERS[cfg.sampler](params, lr=cfg.epsilon, nbeta=nbeta, localization=cfg.gamma, generator=gen)
    draw = 0
    for step in range(cfg.burn_in + cfg.draws * cfg.thin):
        if stop.is_set():
            return
        batch = next(batches)
        loss = loss_fn(model, batch)
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        value = float(loss.detach())
        if not math.isfinite(value):  # diverged: the rest of the chain stays NaN and the warnings say so
            tick(cfg.burn_in + cfg.draws * cfg.thin - step)
            return
        recording = step >= cfg.burn_in and (step - cfg.burn_in) % cfg.thin == 0
        diagnose = recording and cfg.mala_every > 0 and draw % cfg.mala_every == 0
        measure = recording and cfg.mala_every > 0 and draw % max(1, cfg.mala_every // 5) == 0
        if diagnose or cfg.metropolis:
            w_old = [p.detach().clone() for p in params]
            U_old = _U(value, params, w_star, nbeta, cfg.gamma)
        opt.keep_proposal = diagnose or cfg.metropolis
        opt.step()
        if cfg.metropolis:
            prob = _accept_prob(model, params, w_star, w_old, U_old, loss_fn, batch, opt, nbeta, cfg.gamma)
            if not float(torch.rand((), generator=gen, device=params[0].device)) < prob:
                with torch.no_grad():
                    for p, w in zip(params, w_old):
                        p.copy_(w)
        if recording:
            est.update(chain, draw, value)
            if diagnose:
                est.add_mala(
                    chain,
                    prob
                    if cfg.metropolis
                    else _accept_prob(model, params, w_star, w_old, U_old, loss_fn, batch, opt, nbeta, cfg.gamma),
                )
            if measure:
                est.add_distance(chain, opt.distance())
            draw += 1
        tick(1)


def _accept_prob(model, params, w_star, w_old, U_old, loss_fn, batch, opt, nbeta, gamma) -> float:
    """MALA acceptance probability of the step just taken (same batch at both ends); 0 for a non-finite proposal."""
    grad_old, scale = opt.proposal()
    new_loss = loss_fn(model, batch)
    if not math.isfinite(float(new_loss.detach())):
        return 0.0
    g_new = torch.autograd.grad(new_loss, params)
    with torch.no_grad():
        w_new = [p.detach() for p in params]
        grad_new = [nbeta * g + gamma * (p - w) for g, p, w in zip(g_new, w_new, w_star)]
        U_new = _U(float(new_loss), params, w_star, nbeta, gamma)
        return mala_accept_prob(U_old, U_new, w_old, w_new, grad_old, grad_new, scale)
