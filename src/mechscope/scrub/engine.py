"""The causal-scrubbing engine (Chan et al., Redwood Research 2022): resampling ablations driven by a hypothesis.

Shape letters: U inputs the engine may run (references, then pool), P pool rows, B batch, T tokens, S seeds.

The value of node n on reference input x (rows of U, in batches) is defined recursively:

1. draw x' from the pool with f_n(x') = f_n(x) (x' = x for ``identity``; unconditionally for ``none``);
2. a leaf (no children): the activation at n's sites on x' (per-position features: at each position t,
   the activation at t on x'_t); a program node: its program applied to x';
3. an inner node: one forward pass on x_r ("everything else feeding the node"), with each child's sites
   patched by that child's value on reference x', reading n's sites. x_r is drawn by the node's ``rest``:
   unconditionally (``none``, the default and the issue's definition), x' itself (``identity``: the node
   claims nothing about its unnamed inputs, e.g. "only this head is replaced; the rest of the model runs
   on x"), or agreeing with x' on a per-example feature.

A leaf is the recursion's base: the claim "these sites compute f" is tested by taking the sites' whole
value on x', so everything feeding a leaf comes from x'. A child that is not upstream of its parent's
sites is refused (its patch would never be read).

The root is the model's output, so the scrubbed loss is the task's loss of the root's value against x's
targets. Leaf activations are computed once on U and shared by every node and seed (the sampling pool
is shared too); each inner node costs one batched forward pass per seed, stopped after its last site.
Under torchrun the seeds are dealt out over the ranks (:meth:`Scrubber.run`'s ``world``).

Reported (all in nats, means over the references):

- loss_clean     the model untouched
- loss_scrubbed  under the hypothesis, mean over S seeds, with a 95% interval mean ± t_{0.975, S−1}·sd/√S
- loss_baseline  the output resampled unconditionally (the root's value on a random x_r), mean over seeds
- loss_rock      the constant predictor fit on the training targets (``task.rock``)
- recovered      (L_baseline − L_scrubbed) / (L_baseline − L_clean), with the interval mapped the same way
                 (:func:`mechscope.evals.metrics.loss_recovered`: n/a, with the reason in ``recovered_note`` and
                 the verdict, when the gap L_baseline − L_clean is within two standard errors of zero, the error
                 taken over the references' paired losses)

When L_scrubbed > L_rock the hypothesis explains nothing, whatever it "recovers", and the verdict says so.

One departure from the write-up's treeification: a node reached by two paths is evaluated once per path
(with independent draws), which is the write-up's semantics; we do not merge the two computations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from scipy import stats
from torch import Tensor, nn

from mechscope.distributed import World
from mechscope.evals import metrics as M
from mechscope.evals.splice import model_logits
from mechscope.scrub.errors import HypothesisError
from mechscope.scrub.features import Feature
from mechscope.scrub.hypothesis import Hypothesis, Node
from mechscope.scrub.sampling import ClassSampler
from mechscope.sites import SiteError, capture, patch, resolve_sites, stop_after
from mechscope.task import Task


@dataclass
class ScrubResult:
    """The table of the module docstring, per-seed losses, and the verdict in words."""

    loss_clean: float
    loss_scrubbed: float
    loss_scrubbed_ci: tuple[float, float]
    loss_baseline: float
    loss_rock: float
    recovered: float
    recovered_ci: tuple[float, float]
    seeds: int
    examples: int
    per_seed: list[float] = field(default_factory=list)
    baseline_per_seed: list[float] = field(default_factory=list)
    forward_passes: int = 0
    """Example-forward passes run (a batch of B counts B), for the benchmark."""
    recovered_note: str | None = None
    """Why ``recovered`` is n/a (NaN), naming the gap; None when it is a number."""

    @property
    def worse_than_rock(self) -> bool:
        return self.loss_scrubbed > self.loss_rock

    def verdict(self) -> str:
        if self.worse_than_rock:
            return (
                f"the scrubbed model ({self.loss_scrubbed:.4f} nats) is worse than the rock ({self.loss_rock:.4f} nats, "
                "a constant predictor): the hypothesis explains nothing, "
                + (
                    f"and loss recovered is n/a: {self.recovered_note}"
                    if self.recovered_note
                    else f"although it {self._recovers()}"
                )
            )
        if self.recovered_note:
            return (
                f"loss recovered is n/a: {self.recovered_note}; scrubbed loss {self.loss_scrubbed:.4f} vs clean "
                f"{self.loss_clean:.4f} nats, baseline {self.loss_baseline:.4f}"
            )
        return f"the hypothesis {self._recovers()}; scrubbed loss {self.loss_scrubbed:.4f} vs clean {self.loss_clean:.4f} nats"

    def _recovers(self) -> str:
        lo, hi = self.recovered_ci
        return f"recovers {100 * self.recovered:.1f}% of the loss (95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"

    def warning(self) -> str | None:
        """The line to print when loss recovered is n/a (names the baseline and the gap); None otherwise."""
        return (
            None
            if self.recovered_note is None
            else f"warning: loss recovered vs the resampled output is n/a: {self.recovered_note}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "worse_than_rock": self.worse_than_rock, "verdict": self.verdict()}


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """mean ± t_{(1+level)/2, S−1} · sd / √S over seeds (sd with S − 1)."""
    t = torch.tensor(values, dtype=torch.float64)
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1) * t.std() / math.sqrt(len(values)))
    return float(t.mean()) - half, float(t.mean()) + half


class Scrubber:
    """Evaluate one hypothesis on one model: ``Scrubber(model, hyp, inputs, targets, task).run()``.

    ``inputs`` [N, T] and ``targets`` are the references; ``pool_inputs`` and ``pool_targets`` (default: the
    references) are where equivalent inputs are drawn from. ``programs`` maps a program node's name to its function
    (built by :func:`mechscope.scrub.programs.build_programs`).
    """

    def __init__(
        self,
        model: nn.Module,
        hypothesis: Hypothesis,
        inputs: Tensor,
        targets: Tensor,
        task: Task,
        pool_inputs: Tensor | None = None,
        pool_targets: Tensor | None = None,
        programs: dict[str, Callable] | None = None,
    ) -> None:
        self.model, self.hyp, self.task, self.targets = model, hypothesis, task, targets
        self.n_ref = inputs.shape[0]
        if (pool_inputs is None) != (pool_targets is None):
            raise HypothesisError("give pool_inputs and pool_targets together (features may read the targets)")
        self.U = inputs if pool_inputs is None else torch.cat([inputs, pool_inputs])
        self.U_targets = targets if pool_targets is None else torch.cat([targets, pool_targets])
        in_pool = (
            torch.ones(self.U.shape[0], dtype=torch.bool)
            if pool_inputs is None
            else torch.cat(
                [torch.zeros(self.n_ref, dtype=torch.bool), torch.ones(pool_inputs.shape[0], dtype=torch.bool)]
            )
        )
        self.programs = programs or {}
        self.forward_passes = 0
        self._check_sites()
        self.samplers = {
            n.name: ClassSampler(n.feature, self._keys(n, n.feature), in_pool, n.name) for n in hypothesis.nodes()
        }
        self.rest_samplers = {
            n.name: ClassSampler(n.rest, self._keys(n, n.rest), in_pool, n.name)
            for n in hypothesis.nodes()
            if n.children
        }
        self.leaf_acts = self._leaf_activations()

    # --- checks and shared precomputation ------------------------------------------------------

    def _check_sites(self) -> None:
        for n in self.hyp.nodes():
            try:
                resolved = resolve_sites(self.model, list(n.sites)) if n.sites else []
            except SiteError as e:
                raise HypothesisError(f"node {n.name!r}: {e}") from e
            if len(resolved) != len(n.sites):
                raise HypothesisError(
                    f"node {n.name!r}: name each site exactly (no wildcards or aliases that expand to several)"
                )
            if n is not self.hyp.root and not n.sites:
                raise HypothesisError(f"node {n.name!r}: only the root may name no sites")
            if n.program is not None and n.name not in self.programs:
                raise HypothesisError(
                    f"node {n.name!r}: its program was not built (use mechscope.scrub.run_hypothesis)"
                )

    def _keys(self, n: Node, f: Feature) -> Tensor | None:
        if f.fn is None:
            return None
        try:
            keys = f.fn(self.U, self.U_targets)
        except Exception as e:  # a user's feature function: any failure is theirs, named with the node
            raise HypothesisError(f"node {n.name!r}: feature {f.name!r} raised {type(e).__name__}: {e}") from e
        ok = (
            isinstance(keys, Tensor)
            and keys.shape[:1] == (self.U.shape[0],)
            and (keys.shape[1:2] == self.U.shape[1:2] if f.per_position else keys.dim() <= 2)
        )
        if not ok:
            want = "[N, T] or [N, T, k]" if f.per_position else "[N] or [N, k]"
            got = tuple(keys.shape) if isinstance(keys, Tensor) else type(keys).__name__
            raise HypothesisError(
                f"node {n.name!r}: feature {f.name!r} returned {got}; expected {want} with N = {self.U.shape[0]}"
                + (f", T = {self.U.shape[1]}" if f.per_position else "")
            )
        return keys

    @torch.no_grad()
    def _leaf_activations(self) -> dict[str, Tensor]:
        """Activation at every leaf site on all of U, captured in one pass per batch."""
        sites = sorted({s for n in self.hyp.nodes() if not n.children and n.program is None for s in n.sites})
        if not sites:
            return {}
        parts: dict[str, list[Tensor]] = {s: [] for s in sites}
        for lo in range(0, self.U.shape[0], self.hyp.batch_size):
            with capture(self.model, sites) as acts, stop_after(self.model, sites):
                self.model(self.U[lo : lo + self.hyp.batch_size])
            self.forward_passes += min(self.hyp.batch_size, self.U.shape[0] - lo)
            for s in sites:
                parts[s].append(acts[str(resolve_sites(self.model, s)[0])])
        return {s: torch.cat(v) for s, v in parts.items()}

    # --- the recursion -------------------------------------------------------------------------

    def value(self, n: Node, refs: Tensor, gen: torch.Generator) -> dict[str, Tensor] | Tensor:
        """n's scrubbed value on references ``refs`` [B]: {site: activation} (the root: logits)."""
        x1 = self.samplers[n.name].draw(refs, gen)
        if n.program is not None:
            return {n.sites[0]: self.programs[n.name](self.U[x1])}
        if not n.children and not n.sites:  # a root that claims nothing about inner sites: the output on x'
            self.forward_passes += x1.shape[0]
            return model_logits(self.model(self.U[x1]))
        if not n.children:
            if n.feature.per_position:
                return {s: self.leaf_acts[s][x1, torch.arange(x1.shape[1])] for s in n.sites}
            return {s: self.leaf_acts[s][x1] for s in n.sites}
        children = []
        for c in n.children:
            vals = self.value(c, x1, gen)
            assert isinstance(vals, dict)  # only the root's value is logits
            children.append((c, vals))
        xr = self.rest_samplers[n.name].draw(x1, gen)
        return self._forward(n, children, self.U[xr])

    def _forward(
        self, n: Node, children: list[tuple[Node, dict[str, Tensor]]], x: Tensor
    ) -> dict[str, Tensor] | Tensor:
        order: list[str] = []
        with contextlib.ExitStack() as stack:
            for c, vals in children:
                for s, v in vals.items():
                    stack.enter_context(patch(self.model, s, self._patcher(c, s, v, order)))
            if n.sites:
                acts = stack.enter_context(capture(self.model, list(n.sites)))
                stack.enter_context(patch(self.model, n.sites[-1], self._marker(order, "@node")))
                stack.enter_context(stop_after(self.model, list(n.sites)))
            out = self.model(x)
        self.forward_passes += x.shape[0]
        done = order.index("@node") if "@node" in order else len(order)
        for c, vals in children:
            for s in vals:
                if f"{c.name}|{s}" not in order[:done]:
                    raise HypothesisError(
                        f"node {c.name!r}: its site {s!r} is not computed before node {n.name!r}'s sites "
                        "(a child must be upstream of its parent)"
                    )
        if not n.sites:
            return model_logits(out)
        return {s: acts[str(resolve_sites(self.model, s)[0])] for s in n.sites}

    @staticmethod
    def _marker(order: list[str], tag: str) -> Callable[[Tensor], Tensor]:
        def mark(act: Tensor) -> Tensor:
            order.append(tag)
            return act

        return mark

    @staticmethod
    def _patcher(c: Node, site: str, value: Tensor, order: list[str]) -> Callable[[Tensor], Tensor]:
        def write(act: Tensor) -> Tensor:
            order.append(f"{c.name}|{site}")
            if value.shape != act.shape:
                raise HypothesisError(
                    f"node {c.name!r}: its value at site {site!r} has shape {tuple(value.shape)}, "
                    f"the model's activation there has shape {tuple(act.shape)}"
                )
            if c.channels is None:
                return value
            a, b = c.channels
            if b > act.shape[-1]:
                raise HypothesisError(
                    f"node {c.name!r}: channels [{a}, {b}) exceed the site's last axis ({act.shape[-1]})"
                )
            new = act.clone()
            new[..., a:b] = value[..., a:b]
            return new

        return write

    # --- the table ------------------------------------------------------------------------------

    @torch.no_grad()
    def _loss_of_root(self, root: Node, gen: torch.Generator) -> float:
        total = 0.0
        for lo in range(0, self.n_ref, self.hyp.batch_size):
            refs = torch.arange(lo, min(lo + self.hyp.batch_size, self.n_ref))
            v = self.value(root, refs, gen)
            assert isinstance(v, Tensor)  # the root's value: logits
            total += float(self.task.loss(v, self.targets[refs]).double().sum())
        return total / self.n_ref

    @torch.no_grad()
    def _baseline_losses(self, gen: torch.Generator) -> Tensor:
        """The output resampled unconditionally: logits on random pool rows, scored against the references' targets.
        Per reference, [N] float64."""
        pool, parts = self.samplers[self.hyp.root.name].pool, []
        for lo in range(0, self.n_ref, self.hyp.batch_size):
            refs = torch.arange(lo, min(lo + self.hyp.batch_size, self.n_ref))
            xr = pool[torch.randint(0, pool.numel(), refs.shape, generator=gen)]
            parts.append(self.task.loss(model_logits(self.model(self.U[xr])), self.targets[refs]).double())
            self.forward_passes += refs.numel()
        return torch.cat(parts)

    @torch.no_grad()
    def run(self, progress: bool = False, world: World | None = None) -> ScrubResult:
        """The table of the module docstring. ``world``: the torchrun ranks that share the seeds (seed s on rank
        s mod N, its draws from 1000 + s whatever N is); the per-seed losses are gathered under the collective
        timeout, and every rank returns the result of one process running every seed."""
        from tqdm.auto import tqdm

        world = world or World()
        parts = []
        for lo in range(0, self.n_ref, self.hyp.batch_size):
            hi = min(lo + self.hyp.batch_size, self.n_ref)
            parts.append(self.task.loss(model_logits(self.model(self.U[lo:hi])), self.targets[lo:hi]).double())
            self.forward_passes += hi - lo
        clean_per = torch.cat(parts)  # [N]
        clean = float(clean_per.sum()) / self.n_ref
        rock = float(self.task.rock(self.targets).double().mean())
        before = self.forward_passes
        mine: dict[int, tuple[float, Tensor]] = {}  # seed → (scrubbed loss, each reference's baseline loss [N])
        for seed in tqdm(
            world.share(self.hyp.seeds), desc="scrub", unit="seed", disable=not (progress and world.is_main)
        ):
            gen = torch.Generator().manual_seed(1000 + seed)
            mine[seed] = (self._loss_of_root(self.hyp.root, gen), self._baseline_losses(gen))
        if world.size > 1:
            parts = world.gather((mine, self.forward_passes - before), "the gather of every rank's scrub seeds")
            mine = {seed: v for part, _ in parts for seed, v in part.items()}
            self.forward_passes = before + sum(passes for _, passes in parts)
        scrubbed, baseline = [], []
        base_total: Tensor | None = None  # [N] Σ over seeds of each reference's baseline loss, in seed order
        for seed in range(self.hyp.seeds):
            loss, base_per = mine[seed]
            scrubbed.append(loss)
            baseline.append(float(base_per.sum()) / self.n_ref)
            base_total = base_per if base_total is None else base_total + base_per
        assert base_total is not None  # seeds ≥ 1
        ci = interval(scrubbed)
        base = sum(baseline) / len(baseline)
        mean = sum(scrubbed) / len(scrubbed)
        # The gap's error over references: each reference's baseline loss (mean over seeds) minus its clean loss.
        gap_se = M.clustered_stderr(base_total / self.hyp.seeds - clean_per, torch.ones(self.n_ref))

        def rec(scrubbed_loss: float) -> M.Recovered:
            return M.loss_recovered(clean=clean, ablated=base, spliced=scrubbed_loss, gap_se=gap_se)

        r = rec(mean)
        recovered_lo, recovered_hi = sorted((rec(ci[1]).value, rec(ci[0]).value))
        return ScrubResult(
            clean,
            mean,
            ci,
            base,
            rock,
            r.value,
            (recovered_lo, recovered_hi),
            self.hyp.seeds,
            self.n_ref,
            scrubbed,
            baseline,
            self.forward_passes,
            r.reason,
        )
