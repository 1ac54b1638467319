"""Distillation detector: a small student learns the model's output from a site's activation, on trusted
inputs only; an input on which model and student disagree is computed for a different reason.

Per site: student = MLP(d → hidden → C) trained with Adam to minimise KL(p_model ‖ p_student) on the
trusted fit rows, p = softmax of the model's outputs [N, C] (the last position for a sequence model).
Score(x) = KL(p_model(x) ‖ p_student(x)) = Σ_c p_model,c (log p_model,c − log p_student,c).

Departure from an input-level student (e.g. a smaller network trained on raw inputs): the student reads
a site's activation, so one interface serves images and token sequences alike, and each site gets its
own score (the student is a short-cut for the rest of the network after that site).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechscope.anomaly.base import Activations, Detector, DetectorConfig, register
from mechscope.errors import UsageError
from mechscope.training import OptimConfig, fit


@dataclass(frozen=True)
class DistillConfig(DetectorConfig):
    """Settings of the distillation detector."""

    hidden: int = 64
    """Width of the student's hidden layer."""
    steps: int = 300
    """Adam steps of each student."""
    student_batch_size: int = 128
    """Rows per student step (at most the trusted fit rows)."""
    lr: float = 3e-3
    """Student learning rate."""
    seed: int = 0
    """Seed of the student's initialisation and of its batches."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.hidden, self.steps, self.student_batch_size) < 1 or self.lr <= 0:
            raise UsageError("hidden, steps, student_batch_size and lr must be positive")


@register
class Distill(Detector):
    """KL between the model's output and a student's prediction of it from one site."""

    name = "distill"
    config_cls = DistillConfig
    cfg: DistillConfig
    needs_model = True

    def _student(self, x: Tensor, target: Tensor) -> tuple[nn.Module, Tensor, Tensor]:
        """(student, mean [d], sd [d]): the student reads (x − mean) / sd."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng():  # nn.Linear initialises from the global generator; leave it as it was
            torch.manual_seed(cfg.seed)
            net = nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, target.shape[1]))
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        xs, logp = ((x - mu) / sd).float(), F.log_softmax(target.float(), -1)
        batch = min(cfg.student_batch_size, len(x))
        fit(
            net,
            lambda idx: F.kl_div(F.log_softmax(net(xs[idx]), -1), logp[idx], log_target=True, reduction="batchmean"),
            lambda step: torch.randint(len(x), (batch,), generator=g),
            OptimConfig("adam", lr=cfg.lr),
            steps=cfg.steps,
        )
        return net.eval(), mu.float(), sd.float()

    def fit_sites(self, acts: Activations, *, anomalous=None, outputs: Tensor | None = None) -> None:
        if outputs is None:
            raise UsageError("the distill detector needs the model's outputs on the trusted inputs (fit with a model)")
        self.students = {s: self._student(x, outputs) for s, x in acts.items()}

    @torch.no_grad()
    def score_sites(self, acts: Activations, *, outputs: Tensor | None = None, calibrating=False) -> dict[str, Tensor]:
        if outputs is None:
            raise UsageError("the distill detector scores model–student disagreement: it needs the model's outputs")
        logp = F.log_softmax(outputs.float(), -1)
        out = {}
        for s, x in acts.items():
            net, mu, sd = self.students[s]
            logq = F.log_softmax(net((x.float() - mu) / sd), -1)
            out[s] = (logp.exp() * (logp - logq)).sum(1).double()
        return out
