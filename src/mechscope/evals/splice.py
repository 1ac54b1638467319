"""Splicing: put a reconstruction back into the model at a site and measure what the model loses.

A reconstruction's FVU says how close x̂ is to x; splicing says whether the model still works when
it reads x̂ instead of x. Every spliced loss is reported beside the baselines that give it meaning:

- clean         L_clean    the model untouched
- spliced       L_spliced  the site's activation replaced by ``reconstruct(x)``
- zero-ablated  L_zero     the site's activation replaced by 0
- mean-ablated  L_mean     the site's activation replaced by its mean over the training distribution
- rock          L_rock     the best constant model (:mod:`mechscope.evals.rock`): a smoothed unigram over
                           the *training* targets (an LM's training tokens, a classifier's training
                           labels), scored on exactly the evaluation targets the other losses use,
                           with the same clustered standard error

loss recovered vs an ablation = (L_ablated − L_spliced) / (L_ablated − L_clean), and the same with the
rock in place of the ablation; n/a, with a warning line naming the baseline and the gap, when that gap is too
small to divide by (:func:`mechscope.evals.metrics.loss_recovered`). KL = mean over predictions of
KL(p_clean ‖ p_variant). All in nats; the formulas live once in :mod:`mechscope.evals.metrics`. A spliced model whose loss is above the rock
explains nothing, whatever fraction it "recovers", and :meth:`SpliceResult.verdict` says so in words.

Shape letters: N examples (contexts or inputs), T tokens, B batch, d width, M predictions, C classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope.errors import UsageError
from mechscope.evals import metrics as M
from mechscope.models.loading import as_model_input, device_of
from mechscope.sites import Site, capture, patch, resolve_sites, run_to_sites
from mechscope.task import IGNORE, Task

Reconstruct = Callable[[Tensor], Tensor]
"""x: [rows, d] → x̂: [rows, d]; an SAE's ``lambda x: sae(x).x_hat``, a pursuit coder, or the identity."""


def model_logits(out: Any) -> Tensor:
    """Logits from a model's output: a tensor, an object with ``.logits`` (Hugging Face), or a tuple's first item."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def predictions(model: nn.Module, task: Task, lo: int, hi: int, split: str = "val") -> tuple[Tensor, Tensor, Tensor]:
    """``model`` on examples lo:hi of ``task``'s ``split``: (logits [M, C], targets [M], example [M]) of every scored,
    non-ignored prediction (an LM's next tokens, padding left out; a classifier's one per input), all three on the
    device of the logits (the model's); example is the index of the example each prediction belongs to, so errors
    can be clustered by example."""
    args, kwargs = on_device(model, *task.inputs(lo, hi, split))
    logits = model_logits(model(*args, **kwargs))
    picked, t = task.scored(logits, task.split(split)[1][lo:hi].to(logits.device))
    keep = t != IGNORE
    example = torch.arange(lo, hi, device=t.device).unsqueeze(1).expand_as(t)
    return picked[keep], t[keep], example[keep]  # [M, C], [M], [M]


@dataclass(frozen=True)
class SpliceConfig:
    """How much data a splice evaluation reads."""

    batch_size: int = 8
    """Examples (contexts or inputs) per forward pass."""
    max_examples: int | None = None
    """Evaluate on at most this many examples of the task (None: all)."""
    mean_max_examples: int = 256
    """When the mean activation is computed here, read at most this many examples of the training task."""
    skip_first_positions: int = 0
    """Token positions at the start of each context left clean by the splice and both ablations (LM sites
    [B, T, d] only). 1 keeps the BOS position, whose outlier residual a store does not harvest by default.
    A mean computed here (:func:`site_mean`) leaves out the same positions."""
    progress: bool = True
    """Show a progress bar on stderr over the evaluated batches (four forwards each)."""
    rock_alpha: float | None = None
    """Additive smoothing of the rock's unigram; None: chosen by leave-one-out likelihood on the training
    targets (:mod:`mechscope.evals.rock`)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.skip_first_positions < 0:
            raise ValueError(f"skip_first_positions must be ≥ 0, got {self.skip_first_positions}")
        if self.rock_alpha is not None and not self.rock_alpha > 0:
            raise UsageError(f"rock_alpha must be > 0 (or None to choose it), got {self.rock_alpha}")


def on_device(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A task's inputs where ``model`` runs (:func:`~mechscope.models.loading.as_model_input`); its outputs stay there,
    and the metrics are accumulated there (float64 totals)."""
    return tuple(as_model_input(model, a) for a in args), {k: as_model_input(model, v) for k, v in kwargs.items()}


@torch.no_grad()
def site_mean(
    model: nn.Module,
    site: str | Site,
    task: Task,
    batch_size: int = 8,
    max_examples: int | None = None,
    skip_first_positions: int = 0,
    split: str = "train",
) -> Tensor:
    """Mean activation [d] at ``site`` over every row (example, or token position) of ``task``'s ``split``; float32,
    summed in float64 on the model's device.

    For a [B, T, d] site the first ``skip_first_positions`` positions of each context are left out, the
    same positions the splice and the ablations leave clean (and a store does not harvest): mean =
    Σ_{i, t ≥ p0} act[i, t] / (N·(T − p0)). Each forward stops after the site, so this costs a fraction
    of a full pass."""
    s = resolve_sites(model, site)[0]
    n = task.size(split) if max_examples is None else min(task.size(split), max_examples)
    total: Tensor | None = None
    rows = 0
    for lo in range(0, n, batch_size):
        args, kwargs = on_device(model, *task.inputs(lo, min(lo + batch_size, n), split))
        act = run_to_sites(model, s, *args, **kwargs)[str(s)]
        if skip_first_positions:
            if act.dim() < 3:
                raise ValueError(
                    f"skip_first_positions={skip_first_positions} needs a [B, T, d] site, got shape {tuple(act.shape)}"
                )
            act = act[:, skip_first_positions:]
        flat = act.double().reshape(-1, act.shape[-1])
        total = flat.sum(0) if total is None else total + flat.sum(0)
        rows += flat.shape[0]
    if total is None:
        raise ValueError("site_mean: the task has no examples")
    return (total / rows).float()


@dataclass(frozen=True)
class SpliceResult:
    """Losses (nats per prediction) of the clean, spliced and ablated model, and the rock."""

    site: str
    """The site the reconstruction was spliced into."""
    task: str
    """The task's kind: ``lm``, ``classifier`` or ``positions`` (:attr:`mechscope.task.Task.kind`)."""
    n_examples: int
    """Contexts or inputs evaluated."""
    n_predictions: int
    """Predictions scored: next tokens for an LM, examples for a classifier."""
    clean_loss: float
    spliced_loss: float
    zero_loss: float
    mean_loss: float
    rock_loss: float
    """Loss of the best constant model (fit on training targets) on the evaluated targets; NaN without training targets."""
    rock_name: str
    """What the rock is for this task and how it was fit, in words."""
    kl_spliced: float
    """Mean KL(p_clean ‖ p_spliced) per prediction."""
    kl_zero: float
    kl_mean: float
    mean_source: str
    """Where the mean activation came from: ``given`` (or the caller's words), ``training task`` or ``evaluation task``."""
    reconstruction: dict[str, float]
    """Reconstruction metrics (FVU, MSE, cosine, norm ratio) of x̂ against x at the site, on the evaluated rows."""
    stderr: dict[str, float] = dataclasses.field(default_factory=dict)
    """Standard error of each loss (``clean``, ``spliced``, ``zero``, ``mean``, ``rock``) and of the paired
    differences ``spliced_minus_clean``, ``spliced_minus_rock`` and the gaps ``zero_minus_clean``, ``mean_minus_clean``,
    ``rock_minus_clean`` (what loss recovered divides by), clustered by example (:func:`~mechscope.evals.metrics.clustered_stderr`)."""

    BASELINES: ClassVar[dict[str, str]] = {"zero": "zero-ablation", "mean": "mean-ablation", "rock": "the rock"}
    """Each baseline loss recovered is reported against, and its name in warnings."""

    def recovered(self, baseline: str) -> M.Recovered:
        """Loss recovered vs ``baseline`` (``zero``, ``mean`` or ``rock``) by :func:`~mechscope.evals.metrics.loss_recovered`,
        with the standard error of the paired gap (``stderr["<baseline>_minus_clean"]``) in its zero-gap rule."""
        return M.loss_recovered(
            clean=self.clean_loss,
            ablated=getattr(self, f"{baseline}_loss"),
            spliced=self.spliced_loss,
            gap_se=self.stderr.get(f"{baseline}_minus_clean", math.nan),
        )

    @property
    def recovered_vs_zero(self) -> float:
        return self.recovered("zero").value

    @property
    def recovered_vs_mean(self) -> float:
        return self.recovered("mean").value

    @property
    def recovered_vs_rock(self) -> float:
        return self.recovered("rock").value

    def warnings(self) -> list[str]:
        """One line per baseline whose loss recovered is n/a because of its gap (a missing rock is said by the verdict)."""
        out = []
        for b, name in self.BASELINES.items():
            if b == "rock" and math.isnan(self.rock_loss):
                continue
            w = self.recovered(b).warning(name)
            if w:
                out.append(w)
        return out

    @property
    def worse_than_rock(self) -> bool:
        return self.spliced_loss > self.rock_loss

    def verdict(self) -> str:
        """One sentence on whether the spliced model explains anything, judged against the rock."""
        if math.isnan(self.rock_loss):
            return f"No rock was measured ({self.rock_name}), so whether the spliced model explains anything is not judged here."
        if self.clean_loss >= self.rock_loss:
            return (
                f"The clean model ({self.clean_loss:.4f} nats) is no better than the rock ({self.rock_loss:.4f} nats, "
                f"{self.rock_name}) on this data, so no loss gap here means anything."
            )
        se = self.stderr.get("spliced_minus_rock", self.stderr.get("spliced", math.nan))
        if abs(self.spliced_loss - self.rock_loss) < 2 * se:
            return (
                f"The spliced model ({self.spliced_loss:.4f} nats) is within two standard errors of the rock "
                f"({self.rock_loss:.4f} nats, {self.rock_name}; difference {self.spliced_loss - self.rock_loss:+.4f} ± {se:.4f}): "
                "it is not distinguishable from a constant predictor here."
            )
        if self.worse_than_rock:
            return (
                f"The spliced model ({self.spliced_loss:.4f} nats) is worse than the rock ({self.rock_loss:.4f} nats, "
                f"{self.rock_name}): it explains nothing, whatever fraction of loss it recovers."
            )
        return (
            f"The spliced model beats the rock by {self.rock_loss - self.spliced_loss:.4f} nats and keeps "
            f"{M.percent(self.recovered_vs_rock)} of the clean model's advantage over it."
        )

    def headline(self) -> str:
        """The loss-recovered line with every baseline, for a printed summary."""
        return (
            f"loss recovered {M.percent(self.recovered_vs_zero)} vs zero, {M.percent(self.recovered_vs_mean)} vs mean, "
            f"{M.percent(self.recovered_vs_rock)} vs rock (nats: clean {self.clean_loss:.4f}, spliced {self.spliced_loss:.4f}, "
            f"zero {self.zero_loss:.4f}, mean {self.mean_loss:.4f}, rock {self.rock_loss:.4f}; KL {self.kl_spliced:.4f})"
        )

    def summary_lines(self) -> list[str]:
        """One line per baseline, then the verdict."""
        unit = "tokens" if self.task == "lm" else "examples"
        fvu = self.reconstruction.get("fvu", math.nan)

        def loss(name: str, value: float) -> str:
            return f"{value:9.4f} ± {self.stderr.get(name, math.nan):.4f}"

        return [
            f"splice at {self.site}: {self.n_predictions} {unit} from {self.n_examples} examples; losses in nats ± standard error",
            f"  clean         {loss('clean', self.clean_loss)}",
            f"  spliced       {loss('spliced', self.spliced_loss)}   KL to clean {self.kl_spliced:.4f}   FVU at site {fvu:.4f}"
            f"   (spliced − clean {self.spliced_loss - self.clean_loss:.4f} ± {self.stderr.get('spliced_minus_clean', math.nan):.4f})",
            f"  zero-ablated  {loss('zero', self.zero_loss)}   KL to clean {self.kl_zero:.4f}   loss recovered vs zero {M.percent(self.recovered_vs_zero)}",
            f"  mean-ablated  {loss('mean', self.mean_loss)}   KL to clean {self.kl_mean:.4f}   loss recovered vs mean {M.percent(self.recovered_vs_mean)}"
            f"   (mean from {self.mean_source})",
            f"  rock          {loss('rock', self.rock_loss)}   loss recovered vs rock {M.percent(self.recovered_vs_rock)}   ({self.rock_name})",
            f"  {self.verdict()}",
            *(f"  {w}" for w in self.warnings()),
        ]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            recovered_vs_zero=self.recovered_vs_zero,
            recovered_vs_mean=self.recovered_vs_mean,
            recovered_vs_rock=self.recovered_vs_rock,
            worse_than_rock=self.worse_than_rock,
            verdict=self.verdict(),
            warnings=self.warnings(),
        )
        return d


def on_kept_positions(f: Callable[[Tensor], Tensor], p0: int) -> Callable[[Tensor], Tensor]:
    """Apply ``f`` to act[:, p0:] only; positions before p0 keep their clean activation."""
    if p0 == 0:
        return f

    def g(act: Tensor) -> Tensor:
        if act.dim() < 3:
            raise ValueError(f"skip_first_positions={p0} needs a [B, T, d] site, got shape {tuple(act.shape)}")
        out = act.clone()
        out[:, p0:] = f(act[:, p0:])
        return out

    return g


@torch.no_grad()
def evaluate_splice(
    model: nn.Module,
    site: str | Site,
    reconstruct: Reconstruct,
    task: Task,
    *,
    mean_act: Tensor | None = None,
    mean_source: str = "given",
    cfg: SpliceConfig = SpliceConfig(),
    source_site: str | Site | None = None,
) -> SpliceResult:
    """Clean, spliced, zero- and mean-ablated losses of ``model`` on ``task``'s held-out (val) split, with the rock and KLs.

    ``reconstruct`` sees the site's activation flattened to rows [rows, d] and returns x̂ of that shape.
    With ``source_site`` (a transcoder: read the MLP's input, replace its output) ``reconstruct`` sees
    instead the activation of ``source_site`` [rows, d_src] from the same forward pass, which must run
    before ``site``, and its output replaces ``site``; the ablations and FVU stay at ``site``.
    The mean for mean-ablation is ``mean_act`` [d] if given, else computed over the task's training split,
    else — when it has no training examples, and :attr:`SpliceResult.mean_source` records it — over the
    evaluated examples. ``mean_source`` describes a given ``mean_act`` (e.g. "50,000 training rows of the store").
    The rock is the task's, fit on its training targets (``cfg.rock_alpha`` may fix its smoothing); a task without
    training targets has no rock (NaN, said in ``rock_name``), never one fit on the evaluation targets.
    """
    s = resolve_sites(model, site)[0]
    n = task.size("val") if cfg.max_examples is None else min(task.size("val"), cfg.max_examples)
    if n == 0:
        raise ValueError("evaluate_splice: the task has no held-out examples")
    p0 = cfg.skip_first_positions
    has_train = task.size("train") > 0
    if mean_act is None and has_train:
        mean_act, mean_source = site_mean(model, s, task, cfg.batch_size, cfg.mean_max_examples, p0), "training task"
    elif mean_act is None:
        mean_act, mean_source = site_mean(model, s, task, cfg.batch_size, n, p0, split="val"), "evaluation task"
    rock = (task.rock_model if cfg.rock_alpha is None else task.fit_rock(cfg.rock_alpha)) if has_train else None

    stats = M.ReconstructionStats()
    src = resolve_sites(model, source_site)[0] if source_site is not None else None
    seen: dict[str, Tensor] = {}  # the source activation of the running forward, filled by a capture hook

    def spliced(act: Tensor) -> Tensor:
        x = act.reshape(-1, act.shape[-1])
        if src is None:
            inp = x
        else:
            if str(src) not in seen:
                raise ValueError(
                    f"source site {src} did not run before {s}: a transcoder must read a site that comes first"
                )
            a = seen.pop(str(src))
            inp = (a[:, p0:] if p0 else a).reshape(-1, a.shape[-1])
            if inp.shape[0] != x.shape[0]:
                raise ValueError(
                    f"source site {src} has {inp.shape[0]} rows where {s} has {x.shape[0]}; they must be read at the same tokens"
                )
        x_hat = (
            reconstruct(inp.float()).reshape(act.shape).to(act)
        )  # reconstructions are float32 (a bf16 model's act is cast)
        stats.update(x, x_hat)
        return x_hat

    def mean_ablated(act: Tensor) -> Tensor:
        return mean_act.to(act).expand_as(act)

    variants = {
        "spliced": on_kept_positions(spliced, p0),
        "zero": on_kept_positions(torch.zeros_like, p0),
        "mean": on_kept_positions(mean_ablated, p0),
    }

    was_training = model.training
    model.eval()  # dropout would make clean and spliced differ for reasons that are not the splice
    # Loss totals per example (context), so the standard errors can be clustered by example.
    # On the model's device, where the logits are: only the totals leave it.
    dev = device_of(model)
    ce = {k: torch.zeros(n, dtype=torch.float64, device=dev) for k in ("clean", "spliced", "zero", "mean", "rock")}
    counts = torch.zeros(n, dtype=torch.float64, device=dev)
    kl = {"spliced": 0.0, "zero": 0.0, "mean": 0.0}
    try:
        for lo in tqdm(
            range(0, n, cfg.batch_size), desc=f"splice at {s}", unit="batch", disable=not cfg.progress, leave=False
        ):
            hi = min(lo + cfg.batch_size, n)
            logits, targets, example = predictions(model, task, lo, hi)  # [M, C], [M], [M]
            if logits.shape[-1] != task.n_classes:
                raise UsageError(
                    f"the model gives {logits.shape[-1]} logits per prediction but the task has n_classes="
                    f"{task.n_classes}; build the task with n_classes={logits.shape[-1]}"
                )
            logp_clean = torch.log_softmax(logits.float(), -1)
            del logits
            if rock is not None:
                ce["rock"].index_add_(0, example, rock.nll(targets))
            ce["clean"].index_add_(0, example, M.cross_entropy_per(logp_clean, targets))
            counts.index_add_(0, example, torch.ones(example.shape[0], dtype=torch.float64, device=dev))
            for name, fn in variants.items():
                with (
                    capture(model, [src] if src is not None and name == "spliced" else []) as acts,
                    patch(model, s, fn),
                ):
                    seen = acts  # the hook on the source runs first in the forward and fills it
                    other = torch.log_softmax(predictions(model, task, lo, hi)[0].float(), -1)
                ce[name].index_add_(0, example, M.cross_entropy_per(other, targets))
                kl[name] += M.kl_sum(logp_clean, other)
                del other
    finally:
        model.train(was_training)

    m_total = int(counts.sum())
    loss = {k: float(v.sum()) / m_total for k, v in ce.items()}
    stderr = {k: M.clustered_stderr(v, counts) for k, v in ce.items()}
    stderr["spliced_minus_clean"] = M.clustered_stderr(ce["spliced"] - ce["clean"], counts)
    stderr["spliced_minus_rock"] = M.clustered_stderr(ce["spliced"] - ce["rock"], counts)
    for b in ("zero", "mean", "rock"):  # the gaps loss recovered divides by (its zero-gap rule reads their errors)
        stderr[f"{b}_minus_clean"] = M.clustered_stderr(ce[b] - ce["clean"], counts)
    if rock is None:
        loss["rock"] = stderr["rock"] = stderr["spliced_minus_rock"] = stderr["rock_minus_clean"] = math.nan
    return SpliceResult(
        site=str(s),
        task=task.kind,
        n_examples=n,
        n_predictions=m_total,
        clean_loss=loss["clean"],
        spliced_loss=loss["spliced"],
        zero_loss=loss["zero"],
        mean_loss=loss["mean"],
        rock_loss=loss["rock"],
        rock_name=rock.name
        if rock is not None
        else f"no {task.rock_what} rock: no training targets were given to fit it on",
        kl_spliced=kl["spliced"] / m_total,
        kl_zero=kl["zero"] / m_total,
        kl_mean=kl["mean"] / m_total,
        mean_source=mean_source,
        reconstruction=stats.results(),
        stderr=stderr,
    )


class SpliceProbe:
    """Many splices on one task, each for the price of one forward pass per batch.

    ``SpliceProbe(model, site, task, baseline, cfg)`` keeps the clean log-probabilities of every batch
    (memory: predictions × classes floats on the model's device, so keep the task small) and the baselines of ``baseline``
    (an :func:`evaluate_splice` result on the same task, e.g. with the identity; its rock is reused). Calling it with a
    ``reconstruct`` returns the spliced loss, the KL to the clean model, and loss recovered against
    zero-ablation, mean-ablation and the rock, with the formulas of :mod:`mechscope.evals.metrics`.
    """

    def __init__(
        self, model: nn.Module, site: str | Site, task: Task, baseline: SpliceResult, cfg: SpliceConfig = SpliceConfig()
    ) -> None:
        self.model, self.site, self.task, self.baseline, self.cfg = (
            model,
            resolve_sites(model, site)[0],
            task,
            baseline,
            cfg,
        )
        self.n = baseline.n_examples
        self._clean: list[tuple[Tensor, Tensor]] = []  # per batch: (log p_clean [M, C], targets [M])

    @torch.no_grad()
    def __call__(self, reconstruct: Reconstruct, source_site: str | Site | None = None) -> dict[str, float]:
        """Spliced loss, KL and loss recovered of ``reconstruct``; with ``source_site`` it reads that site
        of the same forward and replaces the probe's site (a transcoder, as :func:`evaluate_splice`)."""
        src = resolve_sites(self.model, source_site)[0] if source_site is not None else None
        p0 = self.cfg.skip_first_positions
        seen: dict[str, Tensor] = {}

        def spliced(act: Tensor) -> Tensor:
            inp = act
            if src is not None:
                if str(src) not in seen:
                    raise ValueError(
                        f"source site {src} did not run before {self.site}: a transcoder must read a site that comes first"
                    )
                inp = seen.pop(str(src))
                inp = inp[:, p0:] if p0 else inp
            return reconstruct(inp.reshape(-1, inp.shape[-1]).float()).reshape(act.shape).to(act)

        fn = on_kept_positions(spliced, p0)
        ce = kl = 0.0
        m = 0
        for i, lo in enumerate(range(0, self.n, self.cfg.batch_size)):
            hi = min(lo + self.cfg.batch_size, self.n)
            if i == len(self._clean):
                logits, targets, _ = predictions(self.model, self.task, lo, hi)
                self._clean.append((torch.log_softmax(logits.float(), -1), targets))
            logp_clean, targets = self._clean[i]
            with capture(self.model, [src] if src is not None else []) as acts, patch(self.model, self.site, fn):
                seen = acts  # filled by the hook on the source, which runs first
                other = torch.log_softmax(predictions(self.model, self.task, lo, hi)[0].float(), -1)
            ce += M.cross_entropy_sum(other, targets)
            kl += M.kl_sum(logp_clean, other)
            m += targets.shape[0]
        loss = ce / m
        scored = dataclasses.replace(self.baseline, spliced_loss=loss)  # the baseline's gaps and their errors
        return {
            "loss": loss,
            "kl": kl / m,
            **{f"loss_recovered_{b}": scored.recovered(b).value for b in SpliceResult.BASELINES},
        }

    @property
    def baselines(self) -> dict[str, float]:
        b = self.baseline
        return {"clean": b.clean_loss, "zero ablation": b.zero_loss, "mean ablation": b.mean_loss, "rock": b.rock_loss}
