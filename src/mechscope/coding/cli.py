"""``mechscope frontier --sae DIR --store DIR --site SITE --out DIR``: coders vs the SAE encoder.

Writes ``frontier.json`` (FrontierResult.to_dict()) and the PNG plots to ``--out`` and prints one
line per (coder, L0). With ``--model`` every reconstruction is also spliced into the model at the
site on the store's held-out contexts (:func:`splice_loss_fn`), for loss and loss recovered vs L0
beside the clean, zero-ablation, mean-ablation and rock baselines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from mechscope.atomic import atomic_write_bytes
from mechscope.coding.base import CodingConfig
from mechscope.coding.frontier import FrontierConfig, FrontierResult, LossFn, frontier
from mechscope.coding.plots import save_frontier_plots
from mechscope.config import add_arguments, from_namespace
from mechscope.sae.io import add_load_arguments
from mechscope.errors import UsageError
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.preflight import check_device, sae_fits_store, writable_folder


def add_frontier_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mechscope frontier``: the inputs, then FrontierConfig and CodingConfig (``--coding-*``; k is swept)."""
    parser.add_argument("--sae", required=True, help="folder of a saved SAE (mechscope.sae.load_sae)")
    parser.add_argument("--store", required=True, help="activation store folder")
    parser.add_argument("--site", required=True, help="site name in the store the SAE was trained on")
    parser.add_argument("--out", required=True, help="output folder for frontier.json and the plots")
    parser.add_argument("--device", default="cpu", help="torch device to code on")
    parser.add_argument("--model", default=None, help="'smollm2' or a local Hugging Face folder: splice into it for loss curves "
                        "(none: FVU only)")
    parser.add_argument("--loss-contexts", type=int, default=16, help="held-out contexts each splice is scored on")
    parser.add_argument("--force-site", action="store_true", help="use --site even if the SAE's cfg.json records another site")
    add_arguments(parser, FrontierConfig)
    add_load_arguments(parser)
    add_arguments(parser, CodingConfig, prefix="coding_", skip=("k",))
    add_json_flag(parser)


# What the encoder coders cut to top-k, by FrontierConfig.encoder_sweep (see mechscope.coding.frontier).
ENCODER_SWEEPS: dict[str, Callable[[Any], Callable[[Tensor], Tensor]]] = {
    "truncate": lambda sae: sae.encode,
    "pre_acts": lambda sae: lambda x: torch.relu(sae.pre_acts(x)),
}
#: Architectures whose encoder is top-k of ReLU(pre-activations), so 'auto' sweeps them past their own k that way.
TOPK_ARCHS = ("topk", "batchtopk")


def sweep_encoder(sae: Any, how: str = "auto") -> Callable[[Tensor], Tensor]:
    """The encoder the frontier cuts to top-k: ``how`` in ENCODER_SWEEPS, or 'auto' (pre_acts for TopK-like SAEs)."""
    if how == "auto":
        how = "pre_acts" if getattr(sae, "arch", None) in TOPK_ARCHS else "truncate"
    return ENCODER_SWEEPS[how](sae)


def _first_batch(batches, what: str) -> Tensor:
    batch = next(iter(batches), None)
    if batch is None:
        raise UsageError(f"the store has no {what} rows for this site; harvest with more tokens")
    return batch


def run_frontier(args: argparse.Namespace) -> int:
    """The ``mechscope frontier`` command; 0 on success. ``--json``: the frontier (as frontier.json) on stdout."""
    with human_lines_to_stderr(args.json) as stdout:
        result = frontier_from_args(args)
    if args.json:
        print_json({"out": args.out, **result.to_dict()}, stdout)
    return 0


def frontier_from_args(args: argparse.Namespace, loss_fn: LossFn | None = None, baselines: dict[str, float] | None = None) -> FrontierResult:
    """Load the SAE and the rows, sweep, write the JSON and plots; returns the result."""
    from mechscope.sae import load_sae  # imported here: the CLI must start even where these are heavy
    from mechscope.store import ActivationStore

    cfg = from_namespace(FrontierConfig, args)
    coding = from_namespace(CodingConfig, args, prefix="coding_")
    check_device(args.device)
    if args.loss_contexts <= 0:
        raise UsageError(f"--loss-contexts must be positive, got {args.loss_contexts}")
    writable_folder(args.out)
    device = torch.device(args.device)
    sae = load_sae(args.sae, scaling_factor=args.sae_scaling_factor).to(device).eval()
    store = ActivationStore(args.store)
    args.site = sae_fits_store(sae, args.sae, store, args.site, force_site=getattr(args, "force_site", False))
    # Evaluate on held-out rows; fit the post-hoc scale on training rows so the two never overlap.
    x_eval = _first_batch(store.batches(args.site, cfg.eval_rows, seed=cfg.seed, drop_last=False, split="val"), "validation")
    x_fit = _first_batch(store.batches(args.site, cfg.fit_rows, seed=cfg.seed, drop_last=False, split="train"), "training")
    if args.model is not None and loss_fn is None:
        from mechscope.models import load_model

        lm = load_model(args.model)
        # Mean-ablation uses training rows, never the held-out ones the losses are measured on.
        loss_fn, baselines = splice_loss_fn(lm.model.to(device), args.site, store.tokens("val")[: args.loss_contexts],
                                            x_fit.mean(0), store.first_position, rock_ids=store.tokens("train"))
        print("baselines (nats): " + ", ".join(f"{k} {v:.4f}" for k, v in baselines.items()))
    encoder = sweep_encoder(sae, cfg.encoder_sweep)
    result = frontier(x_eval.to(device), sae, encoder, cfg, coding, x_fit.to(device), loss_fn, baselines, native=sae.encode)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "frontier.json", json.dumps(result.to_dict(), indent=1, default=float).encode())
    save_frontier_plots(result, out)
    print(summary(result))
    return result


def splice_loss_fn(
    model: torch.nn.Module, site: str, input_ids: Tensor, mean_act: Tensor, skip_first_positions: int = 0, batch_size: int = 8,
    rock_ids: Tensor | None = None,
) -> tuple[LossFn, dict[str, float]]:
    """A frontier ``loss_fn`` on contexts input_ids [N, T]: a :class:`mechscope.evals.splice.SpliceProbe`.

    ``rock_ids`` [N_train, T] are the training contexts whose next-token targets the rock is fit on
    (without them the rock is NaN). The baselines (clean, zero ablation, mean ablation, rock) are measured once with the identity splice;
    each call then costs one forward pass per batch and returns ``loss`` (spliced CE), ``kl`` and
    ``loss_recovered_{zero,mean,rock}``.
    """
    from mechscope.evals.splice import LMTask, SpliceConfig, SpliceProbe, evaluate_splice

    task = LMTask(input_ids)
    cfg = SpliceConfig(batch_size=batch_size, skip_first_positions=skip_first_positions)
    rock_targets = None if rock_ids is None else LMTask(rock_ids).targets()
    base = evaluate_splice(model, site, lambda x: x, task, mean_act=mean_act, rock_targets=rock_targets, cfg=cfg)
    for w in base.warnings():  # a gap too small to divide by makes every point's loss recovered vs it n/a
        print(f"mechscope: {w}", file=sys.stderr)
    probe = SpliceProbe(model, site, task, base, cfg)
    return probe, probe.baselines


def summary(result: FrontierResult) -> str:
    """A plain table: coder, target and achieved L0, FVU, Jaccard with the encoder, span cosine, speed, spliced loss.

    A target k marked ``*`` was not reached (achieved L0 under 95% of k); a footnote says so."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{'coder':<15}{'k':>6}{'L0':>9}{'FVU':>9}{'jaccard':>9}{'span_cos':>9}{'rows/s':>9}{'loss':>9}"]
    rows = ([result.native] if result.native else []) + sorted(result.points, key=lambda p: (p.k or 0, p.coder))
    for p in rows:
        k = "native" if p.k is None else f"{p.k}*" if p.below_target else str(p.k)
        speed = "-" if p.rows_per_s is None else f"{p.rows_per_s:.0f}"
        lines.append(f"{p.coder:<15}{k:>6}{p.stats['l0']:>9.2f}{p.stats['fvu']:>9.4f}{fmt(p.jaccard):>9}"
                     f"{fmt(p.span_cosine):>9}{speed:>9}{fmt(p.loss.get('loss')):>9}")
    if any(p.below_target for p in result.points):
        lines.append("* target k not reached: the coder gave fewer latents (the L0 column is what it achieved)")
    return "\n".join(lines)
