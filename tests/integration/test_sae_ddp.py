"""Data parallelism: two CPU processes under torchrun (gloo) end with the weights of one process
trained on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from mechscope.sae import BatchTopKConfig, Member, OptimConfig, TopKConfig, TrainConfig, Trainer

WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from test_sae_ddp import MEMBERS, CFG, batches
    from mechscope.sae import Trainer
    trainer = Trainer(MEMBERS, CFG, sys.argv[1])
    assert trainer.world.size == 2, trainer.world
    trainer.fit(batches())
    """
)

D, N, B = 8, 48, 32
MEMBERS = [
    Member(TopKConfig(d_in=D, latents=N, k=3, auxk_coef=0.5), OptimConfig(lr=5e-3, warmup_steps=2)),
    Member(BatchTopKConfig(d_in=D, latents=N, k=3, threshold_lr=0.2), OptimConfig(lr=5e-3, warmup_steps=2)),
]
CFG = TrainConfig(steps=6, batch_size=B, checkpoint_every=0, dead_window=2 * B, log_every=3, progress=False, device="cpu")


def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(B, D, generator=g) * 2 + 0.5


def test_two_processes_equal_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "ddp"), os.path.dirname(__file__)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ddp = load_file(str(tmp_path / "ddp" / "checkpoint.safetensors"))

    single = Trainer(MEMBERS, CFG, tmp_path / "one")
    assert single.world.size == 1
    single.fit(batches())
    one = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))

    assert ddp.keys() == one.keys()
    for key in one:
        if key.startswith(("0.sae.", "1.sae.", "0.dead", "1.dead")):
            assert torch.allclose(ddp[key].float(), one[key].float(), atol=1e-5, rtol=1e-4), key
    # The weights moved, and BatchTopK learned its threshold from the global batch.
    assert float(one["1.sae.threshold"]) > 0
    init = Trainer(MEMBERS, CFG).saes[0].W_enc.detach()
    assert not torch.allclose(one["0.sae.W_enc"], init, atol=1e-3)
