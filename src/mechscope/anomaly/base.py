"""The one detector interface, its registry, and reading activations for it.

Shapes: N inputs, d activation width at a site, T tokens per context.

``det = make_detector(name, **config)``; ``det.fit(model, trusted, sites)`` with ``trusted`` a tensor of
inputs or an iterable of input batches; ``det.score(inputs) -> Tensor[N]`` (float64, higher = more
anomalous). Detectors that only need activations implement :meth:`Detector.fit_activations` and
:meth:`Detector.score_sites`, so they can also be run on activations directly (tests, benchmarks).

Activations: a site's value ``[N, d]`` is used as is; ``[N, T, d]`` (a sequence model) is read at the
last position, the one whose continuation a trigger changes; anything else is flattened per row.

Aggregation over sites: each site's raw score s is standardised on held-out trusted rows
(z = (s − mean_cal) / std_cal, the calibration rows are the last ``calibration_fraction`` of the trusted
set and are not used to fit), then the sites' z are combined by ``mean`` or ``max``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.evals.splice import model_logits
from mechscope.models.loading import as_model_input
from mechscope.sites import Site, capture, resolve_sites

Inputs = Tensor | Iterable[Tensor]
Activations = dict[str, Tensor]
"""Site name → float64 ``[N, d]``."""


@dataclass(frozen=True)
class DetectorConfig:
    """Settings every detector shares."""

    aggregate: Literal["mean", "max"] = "mean"
    """How per-site standardised scores combine into one score: their mean or their max."""
    calibration_fraction: float = 0.2
    """Fraction of the trusted rows held out to standardise each site's score (not used to fit)."""
    batch_size: int = 256
    """Inputs per forward pass when reading activations."""

    def __post_init__(self) -> None:
        if not 0 < self.calibration_fraction < 1:
            raise UsageError(f"calibration_fraction must lie in (0, 1), got {self.calibration_fraction}")
        if self.batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {self.batch_size}")


REGISTRY: dict[str, type[Detector]] = {}
"""Detector name → class."""


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add a detector to :data:`REGISTRY` under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"detector {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def make_detector(name: str, **config: Any) -> Detector:
    """A detector of a registered kind, its config built from ``config`` (unknown keys are refused)."""
    if name not in REGISTRY:
        raise UsageError(f"unknown detector {name!r}; choose one of: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls.config_cls)}
    bad = sorted(set(config) - known)
    if bad:
        raise UsageError(f"detector {name!r} has no setting {', '.join(bad)}; its settings: {', '.join(sorted(known))}")
    return cls(cls.config_cls(**config))


def _batches(inputs: Inputs, batch_size: int) -> Iterable[Tensor]:
    if isinstance(inputs, Tensor):
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size]
    else:
        yield from inputs


def _rows(act: Tensor) -> Tensor:
    """One row per input: [N, d] as is, [N, T, d] at the last position, else flattened; float64."""
    if act.dim() == 3:
        act = act[:, -1, :]
    elif act.dim() != 2:
        act = act.reshape(act.shape[0], -1)
    return act.double().cpu()


def site_names(model: nn.Module, sites: str | Site | nn.Module | Sequence[str | Site | nn.Module]) -> list[str]:
    """Resolve ``sites`` (names, :class:`Site` s, or submodules of ``model``) to site names of ``model``.
    A module that is not part of ``model`` is refused: its activations belong to another model."""
    if isinstance(sites, (str, Site, nn.Module)):
        sites = [sites]
    if not sites:
        raise UsageError("no sites given: name at least one module of the model in `sites` (e.g. '1')")
    path_of = {id(m): p for p, m in model.named_modules()}
    specs: list[str | Site] = []
    for s in sites:
        if isinstance(s, nn.Module):
            if id(s) not in path_of:
                raise UsageError(
                    f"site module {type(s).__name__} is not part of the {type(model).__name__} being fitted: "
                    "sites of different models cannot be mixed; pass modules (or names) of this model"
                )
            specs.append(path_of[id(s)])
        else:
            specs.append(s)
    return [str(s) for s in resolve_sites(model, specs)]


@torch.no_grad()
def collect(
    model: nn.Module, inputs: Inputs, sites: Sequence[str], batch_size: int = 256, logits: bool = False
) -> tuple[Activations, Tensor | None]:
    """Run ``model`` on ``inputs`` and return (site → float64 [N, d], model outputs [N, C] or None). The outputs
    are the model's logits (a Hugging Face model's ``.logits``; :func:`~mechscope.evals.splice.model_logits`), read
    as activations are: the last position of a sequence."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {s: [] for s in sites}
    outs: list[Tensor] = []
    try:
        for x in _batches(inputs, batch_size):
            with capture(model, list(sites)) as acts:
                y = model(as_model_input(model, x))  # inputs follow the model's device (and dtype, when floating)
            for s in sites:
                parts[s].append(_rows(acts[s]))
            if logits:
                outs.append(_rows(model_logits(y)))
    finally:
        model.train(was_training)
    if not parts[sites[0]]:
        raise UsageError("the input set is empty: give at least one input (trusted sets need enough rows to fit)")
    return {s: torch.cat(v) for s, v in parts.items()}, (torch.cat(outs) if logits else None)


class Detector:
    """Fitted on trusted inputs; scores new inputs, higher = more anomalous.

    Subclasses set ``name`` and ``config_cls`` and implement :meth:`fit_sites` (fit on trusted
    activations) and :meth:`score_sites` (raw per-site scores). Class flags say what a detector sees:
    ``sees_untrusted`` (scores depend on the whole scored batch) and ``supervised`` (fitted with
    anomaly labels: a ceiling, not a detector one could deploy).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[DetectorConfig]] = DetectorConfig
    sees_untrusted: ClassVar[bool] = False
    supervised: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    """True when the detector reads the model's outputs (not only activations at sites)."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.model: nn.Module | None = None
        self.sites: list[str] = []
        self.widths: dict[str, int] = {}
        self.calibration: dict[str, tuple[float, float]] = {}

    # ---- the public interface ---------------------------------------------------------------------
    def fit(self, model: nn.Module, trusted: Inputs, sites: Any, *, anomalous: Inputs | None = None) -> Detector:
        """Fit on ``trusted`` inputs at ``sites`` of ``model``. Only ``supervised`` detectors take
        ``anomalous`` (inputs known to be anomalous)."""
        self._check_labels(anomalous)
        names = site_names(model, sites)
        acts, outs = collect(model, trusted, names, self.cfg.batch_size, logits=self.needs_model)
        bad_acts = None
        if anomalous is not None:
            bad_acts, _ = collect(model, anomalous, names, self.cfg.batch_size)
        self.model = model
        return self.fit_activations(acts, anomalous=bad_acts, outputs=outs)

    def _check_labels(self, anomalous: Any) -> None:
        if self.supervised and anomalous is None:
            raise UsageError(f"detector {self.name!r} is supervised: it needs anomalous examples (anomalous=...)")
        if not self.supervised and anomalous is not None:
            raise UsageError(f"detector {self.name!r} is unsupervised and never sees anomalies: drop anomalous=...")

    def score(self, inputs: Inputs) -> Tensor:
        """Float64 [N]: the aggregated score of each input (higher = more anomalous)."""
        if self.model is None:
            raise UsageError(
                f"detector {self.name!r} has no model: call fit(model, trusted, sites) first "
                "(a detector fitted with fit_activations scores with score_activations)"
            )
        acts, outs = collect(self.model, inputs, self.sites, self.cfg.batch_size, logits=self.needs_model)
        return self.aggregate(self.score_activations(acts, outputs=outs))

    # ---- activations in, scores out ----------------------------------------------------------------
    def fit_activations(
        self, acts: Activations, *, anomalous: Activations | None = None, outputs: Tensor | None = None
    ) -> Detector:
        """Fit on trusted activations (site → [N, d]); the last rows calibrate each site's scale."""
        self._check_labels(anomalous)
        if not acts:
            raise UsageError("no sites given: name at least one site to fit the detector on")
        n = {len(a) for a in acts.values()}
        if len(n) != 1:
            raise UsageError(
                f"sites hold different numbers of rows ({sorted(n)}): activations must come from one set of inputs"
            )
        n_rows = n.pop()
        n_cal = int(round(self.cfg.calibration_fraction * n_rows))
        if n_rows - n_cal < 2 or n_cal < 2:
            raise UsageError(
                f"only {n_rows} trusted rows: need at least 2 to fit and 2 to calibrate; give more trusted inputs"
            )
        self.sites = list(acts)
        self.widths = {s: a.shape[1] for s, a in acts.items()}
        fit = {s: a[: n_rows - n_cal].double() for s, a in acts.items()}
        cal = {s: a[n_rows - n_cal :].double() for s, a in acts.items()}
        split = None if outputs is None else (outputs[: n_rows - n_cal], outputs[n_rows - n_cal :])
        self.fit_sites(fit, anomalous=anomalous, outputs=None if split is None else split[0])
        raw = self.score_sites(cal, outputs=None if split is None else split[1], calibrating=True)
        self.calibration = {s: (float(v.mean()), float(v.std().clamp_min(1e-12))) for s, v in raw.items()}
        return self

    def score_activations(self, acts: Activations, *, outputs: Tensor | None = None) -> dict[str, Tensor]:
        """Raw per-site scores (site → float64 [N]) of activations read at the fitted sites."""
        if set(acts) != set(self.sites):
            raise UsageError(
                f"activations at sites {sorted(acts)} but the detector was fitted on {sorted(self.sites)}: "
                "sites of a different model? score activations read at the fitted sites"
            )
        for s, a in acts.items():
            if a.shape[1] != self.widths[s]:
                raise UsageError(
                    f"site {s!r} has width {a.shape[1]} here but {self.widths[s]} when fitted: "
                    "these activations come from a different model"
                )
        return self.score_sites({s: a.double() for s, a in acts.items()}, outputs=outputs)

    def standardise(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-site z-scores against the trusted calibration rows."""
        return {s: (v.double() - self.calibration[s][0]) / self.calibration[s][1] for s, v in raw.items()}

    def aggregate(self, raw: dict[str, Tensor]) -> Tensor:
        """Float64 [N]: mean or max over sites of the standardised scores."""
        z = torch.stack(list(self.standardise(raw).values()))
        return z.mean(0) if self.cfg.aggregate == "mean" else z.max(0).values

    # ---- what each detector implements --------------------------------------------------------------
    def fit_sites(self, acts: Activations, *, anomalous: Activations | None, outputs: Tensor | None) -> None:
        raise NotImplementedError

    def score_sites(
        self, acts: Activations, *, outputs: Tensor | None = None, calibrating: bool = False
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the result must say about this detector (what it saw)."""
        return {
            "detector": self.name,
            "sees_untrusted_batch": self.sees_untrusted,
            "supervised_ceiling": self.supervised,
            "config": dataclasses.asdict(self.cfg),
        }
