"""Transcoders on SmolLM2's layer-6 MLP beside the baselines, for docs/dictionaries.md. One JSON line.

For each saved dictionary: FVU and L0 on the store's held-out rows (a transcoder's prediction from
mlp_in.6 scored against mlp_out.6; an SAE at mlp_out.6 against its own input), and the next-token loss
with the MLP's output replaced (transcoder: predicted from the MLP's input in the same forward; SAE: its
reconstruction of the output), beside the clean model, zero- and mean-ablation of the MLP's output and
the rock, on the store's first ``--contexts`` held-out contexts. The first dictionary runs the full
:func:`evaluate_splice` (all baselines); the others reuse its baselines through :class:`SpliceProbe`
(one forward per batch each), so every number is on the same predictions.

    OMP_NUM_THREADS=1 nice python bench/transcoders_smollm2.py --store S --dict transcoder=DIR \\
        --dict skip_transcoder=DIR --dict topk_mlp_out=DIR --contexts 32
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mechscope.cli.evaluate import reconstruction_metrics
from mechscope.evals.evaluate import store_task
from mechscope.evals.splice import SpliceConfig, SpliceProbe, evaluate_splice
from mechscope.models import load_model
from mechscope.preflight import sae_metadata
from mechscope.sae import load_sae
from mechscope.store import ActivationStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument(
        "--dict", action="append", required=True, metavar="NAME=DIR", help="a saved SAE or transcoder (repeat)"
    )
    p.add_argument("--contexts", type=int, default=32)
    p.add_argument("--rows", type=int, default=65_536)
    p.add_argument("--target", default="mlp_out.6", help="the site replaced (the MLP's output)")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    store, lm = ActivationStore(a.store), load_model("smollm2")
    target = store.site_name(a.target)
    task = store_task(store, lm.model, a.contexts)
    cfg = SpliceConfig(batch_size=8, skip_first_positions=store.first_position, progress=False)
    out: dict = {
        "bench": "transcoders_smollm2",
        "store": a.store,
        "target": target,
        "contexts": a.contexts,
        "dicts": {},
    }
    probe = base = None
    for spec in a.dict:
        name, _, folder = spec.partition("=")
        sae, meta = load_sae(folder), sae_metadata(folder)
        paired = bool(getattr(sae, "paired", False))
        site = store.site_name(meta["site"])
        rec = reconstruction_metrics(sae, store, site, a.rows, 4096, target if paired else None)
        source = site if paired else None
        if base is None:
            base = evaluate_splice(
                lm.model,
                target,
                lambda x, s=sae: s.predict(x),
                task,
                mean_act=store.mean(target),
                cfg=cfg,
                source_site=source,
            )
            probe = SpliceProbe(lm.model, target, task, base, cfg)
            spl = {
                "loss": base.spliced_loss,
                "kl": base.kl_spliced,
                "loss_recovered_zero": base.recovered_vs_zero,
                "loss_recovered_mean": base.recovered_vs_mean,
                "loss_recovered_rock": base.recovered_vs_rock,
                "stderr_spliced_minus_clean": base.stderr["spliced_minus_clean"],
            }
            out["baselines"] = {
                "clean": base.clean_loss,
                "zero": base.zero_loss,
                "mean": base.mean_loss,
                "rock": base.rock_loss,
                "n_predictions": base.n_predictions,
                "stderr": base.stderr,
                "rock_name": base.rock_name,
            }
        else:
            spl = probe(lambda x, s=sae: s.predict(x), source_site=source)
        out["dicts"][name] = {
            "arch": sae.arch,
            "site": site,
            "paired": paired,
            "latents": sae.latents,
            "k": getattr(sae.cfg, "k", None),
            "fvu": rec["fvu"],
            "l0": rec.get("l0"),
            "dead_fraction": rec.get("dead_fraction"),
            "rows": rec["rows"],
            **spl,
        }
        print(
            f"{name}: FVU {rec['fvu']:.4f} L0 {rec.get('l0', float('nan')):.1f} loss {spl['loss']:.4f} "
            f"recovered vs zero {spl['loss_recovered_zero']:.3f} vs mean {spl['loss_recovered_mean']:.3f}",
            flush=True,
            file=__import__("sys").stderr,
        )
    out["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
