"""Ground truth: on synthetic superposition data with known feature directions, every architecture's
decoder recovers the features. Score = mean over true features of the max cosine with a decoder row.

The six SAEs are one sweep: they train together on the same batches (one pass of data generation),
each with the hyper-parameters that make it learn within this short budget (700 steps of 256 rows).
The data and the initialisation use different seeds: with the same seed the first decoder rows would
*be* the features. Measured here: TopK 0.996, BatchTopK 0.990, Matryoshka 0.958, JumpReLU 0.985, ReLU 0.991,
Gated 0.964. Matryoshka's bar is lower by design: its first prefix (32 latents) must reconstruct data made of
256 independent features on its own, so those latents learn averaged directions rather than single features.
"""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import (
    BatchTopKConfig,
    GatedConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    Member,
    OptimConfig,
    ReLUConfig,
    TopKConfig,
    TrainConfig,
    Trainer,
)

FEATURES, D, LATENTS, P_ON, STEPS, B = 256, 64, 512, 2 / 256, 700, 256
DATA_SEED = 1000
# Required by the issue for TopK, BatchTopK and JumpReLU; ReLU and Gated get a bar they reliably clear.
BARS = {"topk": 0.95, "batchtopk": 0.95, "matryoshka": 0.93, "jumprelu": 0.95, "relu": 0.95, "gated": 0.9}


def superposition(seed: int = DATA_SEED):
    """FEATURES random unit directions in R^D; each row turns each feature on with prob P_ON at U[0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(FEATURES, D, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)

    def batches():
        while True:
            on = torch.rand(B, FEATURES, generator=g) < P_ON
            yield (on * (0.5 + torch.rand(B, FEATURES, generator=g))) @ dirs

    return dirs, batches


def recovery(dirs: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Mean over true features of max_i cos(feature, W_dec[i])."""
    W = W_dec / W_dec.norm(dim=1, keepdim=True)
    return float((dirs @ W.T).max(1).values.mean())


@pytest.fixture(scope="module")
def trained():
    dirs, batches = superposition()
    optim = OptimConfig(lr=1e-2, warmup_steps=50)
    members = [
        Member(TopKConfig(d_in=D, latents=LATENTS, k=2), optim),
        # Global selection leaves more latents dead early on; a strong AuxK revives them in time.
        Member(BatchTopKConfig(d_in=D, latents=LATENTS, k=2, auxk_coef=1.0), optim),
        Member(MatryoshkaConfig(d_in=D, latents=LATENTS, k=2, auxk_coef=1.0), optim),
        Member(
            JumpReLUConfig(
                d_in=D, latents=LATENTS, sparsity_coef=5.0, bandwidth=1.0, threshold_init=1.0, auxk_coef=1.0
            ),
            OptimConfig(lr=2e-2, warmup_steps=50),
        ),
        Member(GatedConfig(d_in=D, latents=LATENTS, l1_coef=5.0), optim),
        Member(ReLUConfig(d_in=D, latents=LATENTS), optim),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: a second thread only adds contention on a 2-core machine
    try:
        trainer = Trainer(
            members, TrainConfig(steps=STEPS, batch_size=B, dead_window=20 * B, progress=False, device="cpu")
        )
        trainer.fit(batches())
    finally:
        torch.set_num_threads(threads)
    return dirs, {m.name: trainer.export(i) for i, m in enumerate(trainer.members)}


@pytest.mark.parametrize("arch", list(BARS))
def test_recovers_the_true_features(trained, arch):
    dirs, saes = trained
    score = recovery(dirs, saes[arch].W_dec.detach())
    print(f"{arch}: mean max cosine {score:.3f}")
    assert score >= BARS[arch], f"{arch}: mean max cosine {score:.3f} < {BARS[arch]}"
    # A random dictionary of the same size scores far lower, so the bar measures learning.
    random_rows = torch.randn(LATENTS, D, generator=torch.Generator().manual_seed(1))
    assert recovery(dirs, random_rows) < 0.6
