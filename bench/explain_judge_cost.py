"""Cost of the local judge (mechscope.explain.judge.HFJudge) per prompt, float32 against bfloat16 autocast, on the
scorers' own prompts for planted latents (detection and fuzzing, 6 firing + 6 non-firing windows of 13 tokens, as
8 before / 4 after gives): tokens per prompt (whole, shared by the batch, each prompt's own), seconds per prompt
(the two dtypes alternate batch by batch in this one process) and how far bfloat16's P(yes) and AUROCs lie from
float32's. Prints ONE JSON line; results in docs/explain.md.

    .venv/bin/python bench/explain_judge_cost.py [--judge smollm2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from mechscope.anomaly.metrics import auroc
from mechscope.explain.judge import HFJudge, shared_prefix
from mechscope.explain.planted import PLANTED, planted_evidence, stdlib_windows
from mechscope.explain.scoring import detection, fuzzing


class Recorder:
    """A judge that records the batches it is asked (and answers ½)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def p_yes(self, prompts: list[str]) -> list[float]:
        self.batches.append(prompts)
        return [0.5] * len(prompts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--judge", default="smollm2", help="model spec of the judge")
    p.add_argument("--latents", nargs="+", default=["paren", "return"], choices=list(PLANTED))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mechscope.models.resolve import language_model

    lm = language_model(args.judge)
    windows = [w[:13] for w in stdlib_windows(lm.tokenizer)]
    rng = np.random.default_rng(0)
    rec = Recorder()
    for i, name in enumerate(args.latents):
        ev = planted_evidence(windows, i, PLANTED[name], 3, 3, 6, rng)
        for scorer in (detection, fuzzing):
            scorer(PLANTED[name].explanation, ev, rec, np.random.default_rng(0))
    judges = {"float32": HFJudge(lm, batch_size=12), "bfloat16": HFJudge(lm, batch_size=12, dtype="bfloat16")}
    rows = [judges["float32"]._ids(q) for q in rec.batches[0]]
    shared = shared_prefix(rows)
    for j in judges.values():  # warm up
        j.p_yes(rec.batches[0][:2])
    p_yes: dict[str, list[list[float]]] = {k: [] for k in judges}
    seconds = dict.fromkeys(judges, 0.0)
    for batch in rec.batches:
        for k, j in judges.items():
            t = time.perf_counter()
            p_yes[k].append(j.p_yes(batch))
            seconds[k] += time.perf_counter() - t
    n = sum(len(b) for b in rec.batches)
    f32, bf16 = (np.concatenate(p_yes[k]) for k in judges)

    def aurocs(k: str) -> list[float]:  # each batch: firing (or truly marked) trials first, then as many others
        return [auroc(np.array(b[len(b) // 2 :]), np.array(b[: len(b) // 2])) for b in p_yes[k]]

    print(
        json.dumps(
            {
                "bench": "explain_judge_cost",
                "judge": args.judge,
                "prompts": n,
                "tokens_per_prompt": float(np.mean([len(r) for r in rows])),
                "shared_tokens": shared,
                "own_tokens_per_prompt": float(np.mean([len(r) - shared for r in rows])),
                "seconds_per_prompt": {k: round(v / n, 4) for k, v in seconds.items()},
                "bf16_abs_diff": {"max": float(abs(f32 - bf16).max()), "mean": float(abs(f32 - bf16).mean())},
                "auroc": {k: [round(a, 4) for a in aurocs(k)] for k in judges},
                "threads": args.threads,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
