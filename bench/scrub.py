"""Scrubbed forward passes per second on the zoo parentheses model: the batched engine against a naive
per-example loop computing the same thing, side by side in one run (issue 10). Prints ONE JSON line;
results in docs/benchmarks.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scrub.py [--hypothesis examples/scrub/parens-correct.yaml]
        [--examples 1000] [--naive-examples 200] [--seeds 2]

A "scrubbed forward pass" is the model's output under the hypothesis for one reference input. The batched
engine (:class:`mechscope.scrub.Scrubber`) computes every leaf activation once on the whole pool and runs
each inner node as one forward pass per batch and seed. The naive loop is what a hand re-implementation
does: for each reference and seed, walk the hypothesis recursively, run the model on the drawn input to
read each leaf, then run the node's forward pass with its children patched, one example at a time. It uses
the engine's own samplers, so both estimate the same scrubbed loss (both means are printed as a check).
The naive loop handles leaves with per-example features and inner nodes (what the parens files use).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from mechscope.evals.splice import model_logits
from mechscope.scrub import Scrubber, load_hypothesis
from mechscope.scrub.hypothesis import Node
from mechscope.sites import capture, patch, resolve_sites, stop_after
from mechscope.zoo import load_zoo

ROOT = Path(__file__).resolve().parents[1]


def naive_value(s: Scrubber, n: Node, ref: int, gen: torch.Generator):
    """The scrubbed value of node ``n`` on reference row ``ref`` of U, one example at a time."""
    x1 = s.samplers[n.name].draw(torch.tensor([ref]), gen)
    if not n.children:
        sites = list(n.sites)
        with capture(s.model, sites) as acts, stop_after(s.model, sites):
            s.model(s.U[x1])
        return {site: acts[str(resolve_sites(s.model, site)[0])] for site in sites}
    children = [(c, naive_value(s, c, int(x1[0]), gen)) for c in n.children]
    xr = s.rest_samplers[n.name].draw(x1, gen)
    with contextlib.ExitStack() as stack:
        for _c, vals in children:
            for site, v in vals.items():
                stack.enter_context(patch(s.model, site, "replace", v))
        if n.sites:
            acts = stack.enter_context(capture(s.model, list(n.sites)))
            stack.enter_context(stop_after(s.model, list(n.sites)))
        out = s.model(s.U[xr])
    return model_logits(out) if not n.sites else {site: acts[str(resolve_sites(s.model, site)[0])] for site in n.sites}


@torch.no_grad()
def naive_loss(s: Scrubber, n_refs: int, seeds: int) -> float:
    total = 0.0
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        for i in range(n_refs):
            total += float(s.task.loss(naive_value(s, s.hyp.root, i, gen), s.targets[i : i + 1]).sum())
    return total / (n_refs * seeds)


@torch.no_grad()
def batched_loss(s: Scrubber, seeds: int) -> float:
    return sum(s._loss_of_root(s.hyp.root, torch.Generator().manual_seed(1000 + k)) for k in range(seeds)) / seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hypothesis", default=str(ROOT / "examples" / "scrub" / "parens-correct.yaml"))
    p.add_argument("--examples", type=int, default=1000, help="references for the batched engine")
    p.add_argument("--naive-examples", type=int, default=200, help="references for the naive loop (it is slow)")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    zm = load_zoo("parens")
    hyp = dataclasses.replace(load_hypothesis(args.hypothesis), seeds=args.seeds, batch_size=4096)
    if any(n.feature.per_position or n.program is not None for n in hyp.nodes()):
        raise SystemExit(
            "bench/scrub.py: the naive loop handles per-example features only (no per-position leaves, no programs)"
        )
    x, y = zm.task.val_inputs[: args.examples], zm.task.val_targets[: args.examples]

    t0 = time.perf_counter()  # the engine's set-up (keys, samplers, leaf activations on the pool) is timed too
    s = Scrubber(zm.model, hyp, x, y, zm.task)
    batched = batched_loss(s, args.seeds)
    t_batched = time.perf_counter() - t0

    # the naive loop draws from the same pool of --examples inputs; only its first --naive-examples are references
    t0 = time.perf_counter()
    naive = naive_loss(s, args.naive_examples, args.seeds)
    t_naive = time.perf_counter() - t0

    rate_b = args.examples * args.seeds / t_batched
    rate_n = args.naive_examples * args.seeds / t_naive
    print(
        json.dumps(
            {
                "bench": "scrub",
                "model": "zoo:parens",
                "hypothesis": Path(args.hypothesis).name,
                "seeds": args.seeds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "batched": {
                    "examples": args.examples,
                    "seconds": round(t_batched, 2),
                    "scrubbed_forwards_per_s": round(rate_b, 1),
                    "loss_scrubbed": round(batched, 4),
                },
                "naive": {
                    "examples": args.naive_examples,
                    "seconds": round(t_naive, 2),
                    "scrubbed_forwards_per_s": round(rate_n, 1),
                    "loss_scrubbed": round(naive, 4),
                },
                "speedup": round(rate_b / rate_n, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
