"""Paper defaults against ours, on the feature-recovery data of tests/integration/test_sae_recovery.py. One JSON line.

Data: 256 planted unit directions in R^64, each on with probability 2/256 at U[0.5, 1.5]; 512 latents,
700 steps of 256 rows, Adam lr 1e-2 (JumpReLU 2e-2), dead window 20 batches; all members of one sweep
see the same batches. Scores: recovery = mean over true features of the max cosine with a decoder row;
held-out FVU and L0 on 8 fresh batches; dead = fraction of latents dead at the end. Each setting is
trained with ``--seeds`` initialisation seeds (the data stay fixed) and the scores are averaged.

TopK / AuxK: ours ("none": mean ‖e − ê‖²) against OpenAI's reference ("residual": divided by the
residual's variance), each with and without sparsify's min(dead/k_aux, 1) scale.
JumpReLU: the settings the recovery test uses, our config defaults (ε = 0.05, θ₀ = 0.01, AuxK 1/32) and
the paper's (ε = θ₀ = 0.001, no AuxK), all with sparsity coefficient 5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from test_sae_recovery import LATENTS, STEPS, B, D, recovery, superposition  # noqa: E402

from mechscope.evals.metrics import ReconstructionStats  # noqa: E402
from mechscope.sae import JumpReLUConfig, Member, OptimConfig, TopKConfig, TrainConfig, Trainer  # noqa: E402

TOPK = {
    f"topk auxk={norm}{' +dead-scale' if scale else ''}": TopKConfig(
        d_in=D, latents=LATENTS, k=2, auxk_normalize=norm, auxk_dead_scale=scale
    )
    for norm in ("none", "residual")
    for scale in (False, True)
}
JUMPRELU = {
    "jumprelu test settings (eps=1, theta0=1, auxk=1)": dict(bandwidth=1.0, threshold_init=1.0, auxk_coef=1.0),
    "jumprelu our defaults (eps=0.05, theta0=0.01, auxk=1/32)": dict(),
    "jumprelu paper (eps=0.001, theta0=0.001, no auxk)": dict(bandwidth=0.001, threshold_init=0.001, auxk_coef=0.0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    members = [Member(cfg, OptimConfig(lr=1e-2, warmup_steps=50), name) for name, cfg in TOPK.items()]
    members += [
        Member(
            JumpReLUConfig(d_in=D, latents=LATENTS, sparsity_coef=5.0, **kw),
            OptimConfig(lr=2e-2, warmup_steps=50),
            name,
        )
        for name, kw in JUMPRELU.items()
    ]
    scores: dict[str, list[dict]] = {m.name: [] for m in members}
    for seed in range(a.seeds):
        dirs, batches = superposition()
        trainer = Trainer(
            members,
            TrainConfig(steps=STEPS, batch_size=B, dead_window=20 * B, progress=False, device="cpu", seed=100 * seed),
        )
        trainer.fit(batches())
        held = [next(batches()) for _ in range(8)]
        for i, m in enumerate(trainer.members):
            sae = trainer.export(i)
            stats = ReconstructionStats()
            with torch.no_grad():
                for x in held:
                    codes = sae.encode(x)
                    stats.update(x, sae.decode(codes), codes)
            r = stats.results()
            scores[m.name].append(
                {
                    "recovery": recovery(dirs, sae.W_dec.detach()),
                    "fvu": r["fvu"],
                    "l0": r["l0"],
                    "dead": trainer.trackers[i].dead_fraction(),
                }
            )
    out = {name: {k: round(sum(s[k] for s in runs) / len(runs), 4) for k in runs[0]} for name, runs in scores.items()}
    print(json.dumps({"bench": "sae_paper_defaults", "seeds": a.seeds, "steps": STEPS, "results": out}))


if __name__ == "__main__":
    main()
