"""Causal scrubbing's seeds dealt out over two CPU processes under torchrun (gloo): seed s on rank s mod 2, the
per-seed losses gathered; the command prints once, and every number (losses, intervals, recovered, per-seed
losses, forward passes) is that of one process running every seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HYPOTHESIS = Path(__file__).resolve().parents[2] / "examples" / "scrub" / "parens-correct.yaml"


def test_scrub_seeds_over_two_ranks_give_the_result_of_one_process():
    argv = ["scrub", str(HYPOTHESIS), "--examples", "120", "--seeds", "3", "--json"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.run(
            [*pre, "-m", "mechscope", *argv], env=env, check=False, capture_output=True, text=True, timeout=300
        )
        for pre in (
            [sys.executable],
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
        )
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:] + runs[1].stderr[-3000:]
    one, two = (r.stdout.strip().splitlines() for r in runs)
    assert len(two) == 1  # rank 0 prints; rank 1 prints nothing
    one, two = json.loads(one[0]), json.loads(two[0])
    assert two == one
    assert len(one["per_seed"]) == 3 and len(set(one["per_seed"])) == 3  # three seeds, each its own draws
