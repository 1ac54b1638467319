"""An acausal crosscoder on two SmolLM2 layers, for docs/dictionaries.md. One JSON line.

Held-out FVU per site and together, L0, and how the latents' decoder norms split over the sites
(fraction of latents writing ≥ 90% of their norm to one site, and the rest: cross-layer latents).
Loss with the later site replaced by the crosscoder's reconstruction of it (it reads both sites: the
earlier one is captured in the same forward, so the splice is causal), beside the clean model, zero-
and mean-ablation of that site and the rock. The earlier site is not spliced: its reconstruction reads
the later site, which does not exist yet in the forward pass (acausal).

    OMP_NUM_THREADS=1 nice python bench/crosscoder_smollm2.py --store S --crosscoder DIR --contexts 32
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mechscope.evals.evaluate import store_task
from mechscope.evals.metrics import ReconstructionStats
from mechscope.evals.splice import SpliceConfig, evaluate_splice
from mechscope.models import load_model
from mechscope.preflight import sae_metadata
from mechscope.sae import load_sae
from mechscope.sites import capture
from mechscope.store import ActivationStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--crosscoder", required=True)
    p.add_argument("--contexts", type=int, default=32)
    p.add_argument("--rows", type=int, default=65_536)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    store, lm = ActivationStore(a.store), load_model("smollm2")
    cc = load_sae(a.crosscoder)
    sites = [store.site_name(s) for s in sae_metadata(a.crosscoder)["site"]]
    L, d = len(sites), cc.site_width
    n = min(a.rows, store.n_rows("val"))
    whole, per_site = ReconstructionStats(), [ReconstructionStats() for _ in sites]
    with torch.no_grad():
        for lo in range(0, n, 4096):
            x = store.gather(tuple(sites), torch.arange(lo, min(lo + 4096, n)).numpy(), "val")
            codes = cc.encode(x)
            x_hat = cc.predict(x, codes)
            whole.update(x, x_hat, codes)
            for l, st in enumerate(per_site):
                st.update(x[:, l * d : (l + 1) * d], x_hat[:, l * d : (l + 1) * d])
    norms = cc.site_decoder_norms()
    share = norms / norms.sum(1, keepdim=True)  # [n, L]
    single = share.max(1).values >= 0.9
    split = {f"mostly_{s}": float((share[:, l] >= 0.9).float().mean()) for l, s in enumerate(sites)}

    # Splice the last site: rows = [earlier sites (captured in this forward) | this site].
    last = sites[-1]
    task = store_task(store, lm.model, a.contexts)
    p0 = store.first_position
    with capture(lm.model, sites[:-1]) as seen:

        def reconstruct(x_last: torch.Tensor) -> torch.Tensor:
            earlier = [seen[s][:, p0:].reshape(-1, d) for s in sites[:-1]]
            return cc.predict(torch.cat([*earlier, x_last], 1))[:, (L - 1) * d :]

        res = evaluate_splice(
            lm.model,
            last,
            reconstruct,
            task,
            mean_act=store.mean(last),
            cfg=SpliceConfig(batch_size=8, skip_first_positions=p0, progress=False),
        )
    out = {
        "bench": "crosscoder_smollm2",
        "sites": sites,
        "latents": cc.latents,
        "k": cc.cfg.k,
        "rows": n,
        "fvu": whole.results()["fvu"],
        "l0": whole.results()["l0"],
        "dead_fraction": whole.results().get("dead_fraction"),
        "fvu_per_site": {s: st.results()["fvu"] for s, st in zip(sites, per_site)},
        "latent_split": {**split, "cross_layer": float((~single).float().mean())},
        "splice": {k: v for k, v in res.to_dict().items() if k != "reconstruction"}
        | {"fvu_at_site": res.reconstruction["fvu"]},
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
