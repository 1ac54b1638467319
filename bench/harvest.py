"""Harvest throughput at layer 6 of SmolLM2, with stop-after and with a full forward pass, in one run.

Prints one JSON line. Both variants harvest the same contexts into fresh stores; the ratio is what
to read (these machines are noisy). The corpus is tokenised once, before timing.

    .venv/bin/python bench/harvest.py [--tokens 16384] [--site resid_post.6]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from unittest import mock

import torch

from mechscope.data.text import TextCorpusConfig, build_contexts
from mechscope.harvest import HarvestConfig, harvest
from mechscope.models import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16_384)
    p.add_argument("--site", default="resid_post.6")
    p.add_argument("--repeats", type=int, default=2, help="alternate the two variants this many times each")
    a = p.parse_args()
    lm = load_model("smollm2")
    corpus = TextCorpusConfig()
    ctx = build_contexts(lm.tokenizer, corpus)  # tokenise once; both variants reuse it
    rates: dict[str, list[float]] = {"stop_after": [], "full_forward": []}
    with mock.patch("mechscope.harvest.build_contexts", lambda *_: ctx), tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, stop in (("stop_after", True), ("full_forward", False)):
                cfg = HarvestConfig(sites=(a.site,), tokens=a.tokens, val_tokens=0, stop_after=stop)
                t0 = time.perf_counter()
                store = harvest(cfg, corpus, f"{tmp}/{name}-{r}", loaded=lm, progress=False)
                rates[name].append(store.n_rows() / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "bench": "harvest",
                "model": lm.model_id,
                "site": a.site,
                "tokens": a.tokens,
                "tokens_per_s_stop_after": round(best["stop_after"], 1),
                "tokens_per_s_full_forward": round(best["full_forward"], 1),
                "speedup": round(best["stop_after"] / best["full_forward"], 2),
                "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                "threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "date": date.today().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
