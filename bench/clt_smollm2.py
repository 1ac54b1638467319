"""A cross-layer transcoder over SmolLM2's first L MLPs beside per-layer transcoders at the same L0. One JSON line.

Both are trained here with the same budget (steps, batch, learning rate, m latents and k kept per layer) on a
store of the MLPs' inputs and outputs (e.g. the graph store of docs/graph.md), through ``train_from_store``,
the function behind ``mechscope train``. Then, on the store's first ``--contexts`` held-out contexts, the
next-token loss with MLPs 0 … L−1 all replaced at once (:mod:`mechscope.graph.splice`) by the CLT, by the
per-layer transcoders, by zero and by their training means, beside the clean model and the rock; and each
run's held-out FVU per layer and L0 (every layer's k latents are kept, so L0 per layer ≤ k).

    OMP_NUM_THREADS=1 nice python bench/clt_smollm2.py --store S --layers 4 --latents 1024 --k 16 --steps 1000 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mechscope.evals.metrics import clustered_stderr, loss_recovered
from mechscope.evals.rock import Rock
from mechscope.graph.replacement import CLTLayer, LayerTranscoder, mlp_paths
from mechscope.graph.splice import clean_losses, fixed_losses, replaced_losses
from mechscope.models import load_model
from mechscope.sae import Member, OptimConfig, TrainConfig, train_from_store
from mechscope.sae.clt import CLTConfig
from mechscope.sae.io import load_sae
from mechscope.sae.transcoder import TranscoderConfig
from mechscope.store import ActivationStore


@torch.no_grad()
def fvu_per_layer(
    store: ActivationStore, ins: list[str], outs: list[str], clt, per_layer: list
) -> dict[str, list[float]]:
    """Held-out FVU of MLP l's output, Σ‖y_l − ŷ_l‖² / Σ‖y_l − ȳ_l‖² (raw units), for the CLT and the per-layer transcoders."""
    L = len(ins)
    err = {"clt": torch.zeros(L, dtype=torch.float64), "per_layer": torch.zeros(L, dtype=torch.float64)}
    s1 = [torch.zeros(store.d(q), dtype=torch.float64) for q in outs]  # per-column sums of y_l
    s2, n = torch.zeros(L, dtype=torch.float64), 0
    for rows in store.batches(tuple(ins + outs), 4096, drop_last=False, split="val"):
        parts = rows.split([store.d(q) for q in ins + outs], dim=1)
        xs, ys = parts[:L], parts[L:]
        pred_clt = clt.predict(rows[:, : sum(store.d(q) for q in ins)]).split([store.d(q) for q in outs], dim=1)
        for l in range(L):
            y = ys[l].double()
            err["clt"][l] += (y - pred_clt[l].double()).pow(2).sum()
            err["per_layer"][l] += (y - per_layer[l].sae.predict(xs[l]).double()).pow(2).sum()
            s1[l] += y.sum(0)
            s2[l] += y.pow(2).sum()
        n += rows.shape[0]
    total = s2 - torch.stack([c.pow(2).sum() for c in s1]) / n  # Σ‖y − ȳ‖² per layer
    return {name: [round(float(e[l] / total[l]), 4) for l in range(L)] for name, e in err.items()} | {
        f"{name}_pooled": round(float(e.sum() / total.sum()), 4) for name, e in err.items()
    }


def stat(v: torch.Tensor) -> dict[str, float]:
    return {"mean": round(float(v.mean()), 4), "se": round(float(v.std() / len(v) ** 0.5), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--latents", type=int, default=1024, help="latents per layer (m)")
    p.add_argument("--k", type=int, default=16, help="latents kept per layer and row")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--contexts", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model = load_model("smollm2").model
    paths = mlp_paths(model)[: a.layers]
    ins, outs = [f"{q}:input" for q in paths], list(paths)
    store = ActivationStore(a.store)
    train = TrainConfig(steps=a.steps, batch_size=a.batch_size, progress=False, device="cpu")
    optim = OptimConfig(lr=a.lr, warmup_steps=min(50, a.steps // 10))
    seconds: dict[str, float] = {}
    t = time.time()
    clt_metrics = train_from_store(
        store,
        ins,
        [Member(CLTConfig(d_in=a.layers, latents=a.layers * a.latents, k=a.k, layers=a.layers), optim)],
        train,
        a.out / "clt",
        target_site=outs,
    )
    seconds["clt_train"] = round(time.time() - t, 1)
    clt = load_sae(a.out / "clt" / "clt").eval().requires_grad_(False)
    per_layer, per_metrics = [], {}
    t = time.time()
    for l in range(a.layers):
        m = train_from_store(
            store,
            ins[l],
            [Member(TranscoderConfig(d_in=1, latents=a.latents, k=a.k), optim)],
            train,
            a.out / f"tc{l}",
            target_site=outs[l],
        )
        per_metrics[l] = m["transcoder"]
        per_layer.append(
            LayerTranscoder(l, paths[l], load_sae(a.out / f"tc{l}" / "transcoder").eval().requires_grad_(False))
        )
    seconds["per_layer_train"] = round(time.time() - t, 1)
    t = time.time()
    ids = store.tokens("val")[: a.contexts]
    clean = clean_losses(model, ids)
    zero = fixed_losses(model, ids, {q: torch.zeros(store.d(q)) for q in outs})
    mean = fixed_losses(model, ids, {q: store.mean(q) for q in outs})
    with_clt = replaced_losses(model, ids, [CLTLayer(l, paths[l], clt) for l in range(a.layers)])
    with_tc = replaced_losses(model, ids, per_layer)
    rock = Rock.fit(store.tokens()[:, 1:], model.config.vocab_size)
    rock_loss = rock.nll(ids[:, 1:].reshape(-1)).reshape(ids.shape[0], -1).mean(1)
    seconds["losses"] = round(time.time() - t, 1)
    fvu = fvu_per_layer(store, ins, outs, clt, per_layer)
    c, z = float(clean.mean()), float(zero.mean())
    gap_se = clustered_stderr(zero - clean, torch.ones(len(clean)))

    def recovered(spliced: torch.Tensor) -> float:  # vs zero-ablation; NaN when the gap is within its noise
        return round(loss_recovered(clean=c, ablated=z, spliced=float(spliced.mean()), gap_se=gap_se).value, 4)

    print(
        json.dumps(
            {
                "bench": "clt_smollm2",
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "layers": a.layers,
                "latents_per_layer": a.latents,
                "k_per_layer": a.k,
                "steps": a.steps,
                "batch_size": a.batch_size,
                "lr": a.lr,
                "train_rows": store.n_rows("train"),
                "contexts": int(ids.shape[0]),
                "tokens_per_context": int(ids.shape[1]),
                "clt": {key: clt_metrics["clt"][key] for key in clt_metrics["clt"] if not key.startswith("_")},
                "per_layer": {
                    l: {key: v for key, v in per_metrics[l].items() if not key.startswith("_")} for l in per_metrics
                },
                "fvu_held_out": fvu,
                "loss": {
                    "clean": stat(clean),
                    "clt": stat(with_clt),
                    "per_layer_transcoders": stat(with_tc),
                    "zero_ablation": stat(zero),
                    "mean_ablation": stat(mean),
                    "rock": stat(rock_loss),
                },
                "clt_minus_per_layer": stat(with_clt - with_tc),
                "recovered_vs_zero": {
                    "clt": recovered(with_clt),
                    "per_layer_transcoders": recovered(with_tc),
                    "mean_ablation": recovered(mean),
                },
                "seconds": {**seconds, "total": round(time.time() - t0, 1)},
            }
        )
    )


if __name__ == "__main__":
    main()
