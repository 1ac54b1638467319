"""What the tensor digest costs: the sha256 of a SmolLM2-sized SAE's tensors beside the time to save
and to load that SAE (each computes the digest once: written on save, verified on load).

    python bench/sae_files.py            # TopK SAE, d=576, n=8192 (37.8 MB of float32)
    python bench/sae_files.py --quick    # d=128, n=2048

Prints ONE JSON line: MB of tensors, best-of-``--repeats`` seconds of ``save_sae`` (atomic, fsynced),
of ``load_sae`` and of the digest alone, and the digest's share of save + load. ``load_avg_1min`` is the machine's load
when the run started.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mechscope.digest import tensors_digest
from mechscope.sae import TopKConfig, TopKSAE, load_sae, save_sae


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    d, n = (128, 2048) if args.quick else (576, 8192)
    load = os.getloadavg()[0]
    sae = TopKSAE(TopKConfig(d_in=d, latents=n, k=32), generator=torch.Generator().manual_seed(0))
    tensors = {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae"
        save_s = best(lambda: save_sae(sae, folder), args.repeats)
        load_s = best(lambda: load_sae(folder), args.repeats)
    digest_s = best(lambda: tensors_digest(tensors), args.repeats)
    mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    print(
        json.dumps(
            {
                "bench": "sae_files",
                "d": d,
                "latents": n,
                "mb": round(mb, 1),
                "save_s": round(save_s, 4),
                "load_s": round(load_s, 4),
                "digest_s": round(digest_s, 4),
                "digest_mb_per_s": round(mb / digest_s, 1),
                "digest_share_of_save_plus_load": round(2 * digest_s / (save_s + load_s), 3),
                "load_avg_1min": round(load, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
