"""``mechscope demo``: the core path on the embedded SmolLM2, end to end, with every output's path printed.

1. load SmolLM2-135M-Instruct (converted once to a float32 safetensors copy in the cache);
2. harvest the layer-6 residual stream over the standard library's docstrings (resumable store);
3. train a TopK SAE (8192 latents, k=32) on it (resumable checkpoints);
4. sweep L0 for the SAE encoder and the pursuit coders on the same dictionary, with loss recovered;
5. train the toy model of superposition with 5 features in 2 dimensions (the pentagon, cached);
6. write the HTML report: metrics beside the zero-ablation, mean-ablation and rock baselines, the
   frontier, the toy model, activation distributions and latent dashboards.

Every stage reuses what an earlier run left (store, SAE), so a re-run is quick and an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mechscope.atomic import atomic_write_bytes
from mechscope.config import (
    COUNT,
    LEARNING_RATE,
    add_arguments as add_config_arguments,
    check_ranges,
    from_namespace,
    to_dict,
)
from mechscope.data.text import TextCorpusConfig
from mechscope.errors import UsageError
from mechscope.harvest import HarvestConfig, harvest
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.preflight import writable_folder


@dataclass(frozen=True)
class DemoConfig:
    """Budget of the demo run."""

    out: str = "out/demo"
    """Folder for the store, the SAE, the frontier and the report."""
    site: str = "resid_post.6"
    """Site to study."""
    tokens: int = 150_000
    """Training tokens harvested (the store is reused on a re-run)."""
    val_tokens: int = 16_384
    """Held-out tokens harvested for evaluation."""
    latents: int = 8192
    """Latents of the TopK SAE."""
    k: int = 32
    """Active latents per row of the TopK SAE."""
    steps: int = 400
    """Training steps (several passes over the store)."""
    batch_size: int = 4096
    """Rows per training step."""
    lr: float = field(default=1e-3, metadata=LEARNING_RATE)
    """Peak Adam learning rate, in (0, 10]."""
    frontier_l0s: tuple[int, ...] = (16, 32, 64)
    """Target L0 values of the sparse-coding frontier (the SAE's own L0 is always added)."""
    frontier_rows: int = 4096
    """Held-out rows the frontier codes."""
    loss_contexts: int = 8
    """Held-out contexts spliced into the model for each frontier point's loss."""
    report_contexts: int = 32
    """Held-out contexts spliced for the report's loss-recovered table."""
    toy_steps: int = field(default=3000, metadata=COUNT)
    """Training steps of the toy model of superposition (n=5, m=2; cached after the first run); ≥ 1."""

    def __post_init__(self) -> None:
        check_ranges(self)
        counts = ("tokens", "latents", "k", "steps", "batch_size", "frontier_rows", "loss_contexts", "report_contexts")
        for name in counts:
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.val_tokens <= 0:
            raise UsageError(
                f"--val-tokens must be positive (the demo evaluates on held-out rows), got {self.val_tokens}"
            )
        if self.k > self.latents:
            raise UsageError(f"--k ({self.k}) cannot exceed --latents ({self.latents})")
        if not self.frontier_l0s or min(self.frontier_l0s) <= 0:
            raise UsageError(f"--frontier-l0s must be positive integers, got {self.frontier_l0s}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DemoConfig)
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    """``mechscope demo``; ``--json``: one object with every stage's results on stdout, the progress on stderr."""
    cfg = from_namespace(DemoConfig, args)
    out = writable_folder(cfg.out)
    with human_lines_to_stderr(args.json) as stdout:
        results = _demo(cfg, out)
    if args.json:
        print_json(results, stdout)
    return 0


def _demo(cfg: DemoConfig, out: Path) -> dict:
    """The six stages; returns what ``--json`` prints (paths, SAE metrics, frontier, toy model, report)."""
    t0 = time.time()

    def stage(i: int, text: str) -> None:
        print(f"\n[{i}/6] {text}  (t={time.time() - t0:.0f}s)", flush=True)

    from mechscope.models.resolve import language_model

    stage(1, "loading SmolLM2-135M-Instruct")
    lm = language_model("smollm2")
    print(f"      {lm.model_id} from {lm.path}")

    stage(2, f"harvesting {cfg.site} over {cfg.tokens:,} training tokens of standard-library docstrings")
    store = harvest(
        HarvestConfig(sites=(cfg.site,), tokens=cfg.tokens, val_tokens=cfg.val_tokens),
        TextCorpusConfig(),
        out / "store",
        loaded=lm,
    )
    site = store.site_name(cfg.site)
    print(
        f"      store {store.path}: {store.n_rows():,} train rows, {store.n_rows('val'):,} held-out rows, width {store.d(site)}"
    )

    stage(3, f"training a TopK SAE ({cfg.latents} latents, k={cfg.k}, {cfg.steps} steps of {cfg.batch_size} rows)")
    sae = _train(cfg, store, site, out / "sae")

    stage(4, "sparse coding at inference time: encoder vs pursuit coders on the same dictionary")
    frontier_result, figures = _frontier(cfg, store, site, lm, sae, out / "frontier")

    stage(5, "toy model of superposition: 5 sparse features in 2 dimensions")
    toy_result, toy_section = _toy(cfg, out / "toy")

    stage(6, "evaluating beside the baselines and writing the report")
    from mechscope.report.build import ReportConfig, frontier_points
    from mechscope.report.from_store import report_from_store
    from mechscope.report.html import Section

    outcome = report_from_store(
        out / "report.html",
        sae,
        store,
        site,
        lm,
        ReportConfig(title="mechscope demo: SmolLM2 layer 6", splice_contexts=cfg.report_contexts),
        run_config={
            "demo": to_dict(cfg),
            "model": lm.model_id,
            "store": str(store.path.resolve()),
            "sae": str((out / "sae").resolve()),
        },
        extra_points=frontier_points(frontier_result.to_dict()),
        sections=[
            Section(
                "Sparse coding at inference time",
                text=_frontier_text(frontier_result),
                figures=tuple((p.stem.replace("_", " "), p) for p in figures),
            ),
            toy_section,
        ],
    )
    print()
    for line in outcome.summary_lines():
        print("      " + line)
    print(
        f"\ndemo done in {time.time() - t0:.0f}s. Outputs:\n  store     {store.path.resolve()}\n"
        f"  SAE       {(out / 'sae' / 'topk').resolve()}\n  frontier  {(out / 'frontier').resolve()}\n"
        f"  report    {Path(outcome.path).resolve()}"
    )
    return {
        "seconds": time.time() - t0,
        "store": {"path": store.path.resolve(), "train_rows": store.n_rows(), "val_rows": store.n_rows("val")},
        "sae": {
            "path": (out / "sae" / "topk").resolve(),
            **json.loads((out / "sae" / "topk" / "eval.json").read_text()),
        },
        "frontier": frontier_result.to_dict(),
        "toy": toy_result,
        **outcome.to_dict(),
    }


def _train(cfg: DemoConfig, store, site: str, folder: Path):
    from mechscope.sae import Member, OptimConfig, TopKConfig, TrainConfig, load_sae, train_from_store

    sae_dir = folder / "topk"
    if (sae_dir / "eval.json").is_file():
        print(f"      reusing the SAE in {sae_dir} (delete it to retrain)")
    else:
        member = Member(
            TopKConfig(d_in=store.d(site), latents=cfg.latents, k=cfg.k),
            OptimConfig(lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10)),
        )
        train_from_store(
            store,
            site,
            [member],
            TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, checkpoint_every=100),
            folder,
            metadata={"site": site, "model": store.manifest.get("model_id")},
        )
    ev = json.loads((sae_dir / "eval.json").read_text())
    print(f"      held-out FVU {ev['fvu']:.4f}, L0 {ev['l0']:.1f}, dead {ev['dead_fraction']:.2%}  ({sae_dir})")
    return load_sae(sae_dir).eval()


def _frontier(cfg: DemoConfig, store, site: str, lm, sae, folder: Path):
    from mechscope.cli.frontier import summary
    from mechscope.coding.base import CodingConfig
    from mechscope.coding.frontier import FrontierConfig, frontier, sweep_encoder
    from mechscope.coding.plots import save_frontier_plots
    from mechscope.coding.splice import splice_loss_fn
    from mechscope.evals.evaluate import store_task

    x_eval = next(store.batches(site, cfg.frontier_rows, seed=0, drop_last=False, split="val"))
    x_fit = next(store.batches(site, min(4096, store.n_rows()), seed=0, drop_last=False, split="train"))
    # Baselines once (identity splice), then one forward pass per frontier point.
    probe, baselines = splice_loss_fn(
        lm.model,
        site,
        store_task(store, lm.model, cfg.loss_contexts),
        store.mean(site, 50_000),
        store.first_position,
        batch_size=4,
    )
    # A TopK encoder is swept through its pre-activations, so its points above k=32 have the L0 they claim.
    result = frontier(
        x_eval,
        sae,
        sweep_encoder(sae),
        FrontierConfig(l0s=cfg.frontier_l0s),
        CodingConfig(),
        x_fit,
        probe,
        baselines,
        native=sae.encode,
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "frontier.json", json.dumps(result.to_dict(), indent=1, default=float).encode())
    figures = save_frontier_plots(result, folder)
    for line in summary(result).splitlines():
        print("      " + line)
    print("      " + _frontier_text(result))
    return result, figures


def _toy(cfg: DemoConfig, folder: Path):
    """The TMS pentagon: its measurements and its report section (and tms.png in ``folder``)."""
    from mechscope.cli.toy import TMSConfig
    from mechscope.toy.tms import tms_section

    folder.mkdir(parents=True, exist_ok=True)
    res, section = tms_section(*TMSConfig(steps=cfg.toy_steps, instances=4).build(), folder)
    print(
        f"      dims per feature {res['dims_per_feature']:.3f} (m / represented features {res['dims_per_represented_feature']:.3f}), "
        f"D_i {', '.join(f'{d:.2f}' for d in res['feature_dimensionality'])}  ({folder / 'tms.png'})"
    )
    return res, section


def _frontier_text(result) -> str:
    """One sentence: at the SAE's own L0, which coder reconstructs best, and by how much against the encoder."""
    native = result.native
    if native is None:
        return ""
    k = round(native.stats["l0"])
    at_k = [p for p in result.points if p.k == k]
    best = min(at_k, key=lambda p: p.stats["fvu"], default=None)
    if best is None:
        return ""
    verdict = "lower" if best.stats["fvu"] < native.stats["fvu"] else "not lower"
    return (
        f"At the SAE's own L0 ({k}), the best coder is {best.coder} with FVU {best.stats['fvu']:.4f} against the "
        f"encoder's {native.stats['fvu']:.4f}: {verdict}."
    )
