"""The scorers on planted latents (mechscope.explain.planted): AUROC of the true explanation beside a random one
(another planted latent's), the constant one and a wrong one, per scorer, with the embedded SmolLM2-135M-Instruct
as the judge. Prints ONE JSON line; results in docs/explain.md, "Scores".

    .venv/bin/python bench/explain_scoring.py [--latents paren return] [--scorers detection fuzzing embedding]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

from mechscope.explain.planted import PLANTED, planted_evidence, stdlib_windows
from mechscope.explain.scoring import SCORERS, score_latent

WRONG = "names of animals"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--latents", nargs="+", default=["paren", "return"], choices=list(PLANTED))
    p.add_argument("--scorers", nargs="+", default=list(SCORERS), choices=list(SCORERS))
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--quantiles", type=int, default=5)
    p.add_argument("--negatives", type=int, default=10)
    p.add_argument("--judge", default="smollm2", help="model spec of the judge")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from transformers import AutoTokenizer

    from mechscope.explain.judge import HFJudge
    from mechscope.models.embedded import SMOLLM2, ensure_converted

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(SMOLLM2), local_files_only=True)
    windows = stdlib_windows(tokenizer)
    judge = HFJudge(args.judge) if any(SCORERS[s].uses_judge for s in args.scorers) else None
    rng = np.random.default_rng(args.seed)
    rows = {}
    for i, name in enumerate(args.latents):
        planted = PLANTED[name]
        ev = planted_evidence(windows, i, planted, args.top, args.quantiles, args.negatives, rng)
        others = [PLANTED[o].explanation for o in args.latents if o != name]
        s = score_latent(ev, planted.explanation, others, judge, args.scorers, rng, n_boot=1000)
        row = s.to_json()
        for scorer in args.scorers:
            row["scores"][scorer]["wrong"] = SCORERS[scorer](WRONG, ev, judge, np.random.default_rng(args.seed))
        rows[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)  # progress: one line per latent
    print(
        json.dumps(
            {
                "bench": "explain_scoring",
                "judge": args.judge,
                "wrong_explanation": WRONG,
                "windows": {"top": args.top, "quantiles": args.quantiles, "negatives": args.negatives},
                "latents": rows,
                "seconds": round(time.time() - t0, 1),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
