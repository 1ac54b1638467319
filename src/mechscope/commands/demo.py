"""``mechscope demo``: the core path on the embedded SmolLM2, end to end, with every output's path printed."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from mechscope.config import add_arguments as add_config_arguments
from mechscope.config import from_namespace
from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest


@dataclass(frozen=True)
class DemoConfig:
    """Budget of the demo run."""

    out: str = "out/demo"
    """Folder for the store, the SAE, and the report."""
    site: str = "resid_post.6"
    """Site to study."""
    tokens: int = 150_000
    """Training tokens harvested (the store is reused on a re-run)."""
    val_tokens: int = 16_384
    """Held-out tokens harvested for evaluation."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DemoConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_namespace(DemoConfig, args)
    out = Path(cfg.out)
    t0 = time.time()
    from mechscope.models import load_model
    lm = load_model("smollm2")
    print(f"[1/1] model {lm.model_id} loaded from {lm.path} ({time.time() - t0:.1f}s)")
    store = harvest(HarvestConfig(sites=(cfg.site,), tokens=cfg.tokens, val_tokens=cfg.val_tokens),
                    TextCorpusConfig(), out / "store", loaded=lm)
    x = store.rows(cfg.site, 0, min(4096, store.n_rows()))
    print(f"      store {store.path}: {store.n_rows():,} train rows, {store.n_rows('val'):,} val rows, "
          f"width {store.d(cfg.site)}, mean ‖x‖ {x.norm(dim=-1).mean():.1f}")
    print(f"demo done in {time.time() - t0:.0f}s; outputs under {out.resolve()}")
    return 0
