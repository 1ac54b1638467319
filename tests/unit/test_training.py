"""training.fit: a known answer (least squares), each schedule's formula, kill-and-resume equal to an uninterrupted run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mechscope
from mechscope.checkpoint import CheckpointError
from mechscope.training import SCHEDULES, Checkpoint, OptimConfig, fit, lr_at

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_linear_regression_reaches_the_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = (
        x @ torch.tensor([[1.5], [-2.0], [0.5]], dtype=torch.float64)
        + 0.3
        + 0.1 * torch.randn(64, 1, generator=g, dtype=torch.float64)
    )
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    out = fit(
        model,
        lambda b: (model(b[0]) - b[1]).pow(2).mean(),
        lambda s: (x, y),
        OptimConfig("adam", lr=0.05, schedule="cosine"),
        steps=1500,
    )
    design = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], 1)
    best = torch.linalg.lstsq(design, y).solution[:, 0]
    torch.testing.assert_close(torch.cat([model.weight[0], model.bias]).detach(), best, atol=1e-6, rtol=0)
    assert out.steps == 1500 and out.loss == pytest.approx(float((design @ best - y[:, 0]).pow(2).mean()), rel=1e-9)


@pytest.mark.parametrize(
    "schedule, step, want",
    [
        ("constant", 7, 2.0),
        ("cosine", 5, 2.0 * 0.5 * (1 + math.cos(math.pi / 2))),
        ("cosine_fraction", 5, 1.0),
        ("warmup", 0, 0.5),
        ("warmup", 3, 2.0),
        ("warmup", 9, 2.0),
        ("warmup_linear", 1, 1.0),
        ("warmup_linear", 4, 2.0),
        ("warmup_linear", 7, 1.0),  # (10 − 7) / (10 − 4) = 1/2
        ("warmup_late_linear", 2, 1.5),
        ("warmup_late_linear", 7, 2.0 * 0.6),  # start 5: f = 2/5
        ("warmup_late_cosine", 7, 2.0 * 0.5 * (1 + math.cos(0.4 * math.pi))),
        ("warmup_late_cosine", 4, 2.0),
    ],
)
def test_each_schedule_follows_its_formula(schedule, step, want):
    o = OptimConfig(lr=2.0, schedule=schedule, warmup=4, decay_start=0.5)
    assert lr_at(o, step, 10) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("schedule", ["annealing", "warmup", "warmup_linear"])
def test_the_schedules_that_replaced_torch_schedulers_give_their_learning_rates_bit_for_bit(schedule):
    o = OptimConfig(lr=1e-2, schedule=schedule, warmup=5)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=o.lr)
    T = 50
    factor = (
        (lambda s: min(1.0, (s + 1) / 5) * (max(0.0, (T - s) / (T - 5)) if s >= 5 else 1.0))
        if schedule == "warmup_linear"
        else (lambda s: min(1.0, (s + 1) / 5) * 1.0)
    )
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T)
        if schedule == "annealing"
        else torch.optim.lr_scheduler.LambdaLR(opt, factor)
    )
    theirs, lr = [], o.lr
    for _ in range(T):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = []
    for s in range(T):
        lr = SCHEDULES[schedule](o, s, T, lr)
        ours.append(lr)
    assert ours == theirs and lr_at(o, 17, T) == theirs[17]


# One run: dropout draws from the global RNG, batches from a generator, lr from the recursive schedule.
RUN = """
import sys, torch
from pathlib import Path
from torch import nn
from mechscope.digest import tensors_digest
from mechscope.training import Checkpoint, OptimConfig, fit
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
g = torch.Generator().manual_seed(1)
def batch(step):
    x = torch.randn(16, 4, generator=g)
    return x, x.sum(1, keepdim=True)
out = fit(model, lambda b: (model(b[0]) - b[1]).pow(2).mean(), batch, OptimConfig("adamw", lr=1e-2, schedule="annealing"),
          steps=12, clip=0.5, generators=[g], on_step=lambda s, loss: {"step": s, "loss": float(loss.detach())},
          checkpoint=Checkpoint(Path(sys.argv[1]), every=3, identity={"test": 1}))
print(tensors_digest(model.state_dict()), [r["step"] for r in out.log] == list(range(12)), out.loss)
"""


def _run(path: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(mechscope.__file__).parents[1])}
    env.pop("MECHSCOPE_FAULT", None)
    if fault:
        env["MECHSCOPE_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", RUN, str(path)], env=env, capture_output=True, text=True, timeout=120)


def test_a_run_killed_mid_training_resumes_to_the_same_weights_bit_for_bit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run", str(tmp_path / "whole.safetensors")])
    exec(compile(RUN, "run", "exec"), {"__name__": "run"})  # the uninterrupted run, in this process
    whole = capsys.readouterr().out
    killed = _run(tmp_path / "cut.safetensors", "training.step@8")  # after step 8, past the checkpoint of step 6
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "cut.safetensors").is_file()
    resumed = _run(tmp_path / "cut.safetensors")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == whole and "True" in whole


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    model = nn.Linear(2, 1)

    def run(lr: float) -> None:
        fit(
            model,
            lambda x: model(x).pow(2).mean(),
            lambda s: torch.ones(4, 2),
            OptimConfig(lr=lr),
            steps=3,
            checkpoint=Checkpoint(tmp_path / "c.safetensors"),
        )

    run(1e-3)
    with pytest.raises(CheckpointError, match="written for another run"):
        run(2e-3)


def test_clip_scales_the_gradient_to_the_given_global_norm():
    w = nn.Parameter(torch.zeros(3))
    target = torch.tensor([30.0, 40.0, 0.0])  # gradient (−30, −40, 0): norm 50
    norms = []
    for clip in (None, 1.0):
        fit(
            [w],
            lambda _: (w - target).pow(2).sum() / 2,
            lambda s: None,
            OptimConfig(lr=1e-9),
            steps=1,
            clip=clip,
            on_step=lambda s, loss: norms.append(float(w.grad.norm())),
        )
    assert norms == [pytest.approx(50.0), pytest.approx(1.0)]
