"""``mechscope frontier --sae DIR --store DIR --site SITE --out DIR``: coders vs the SAE encoder.

Writes ``frontier.json`` (FrontierResult.to_dict()) and the PNG plots to ``--out`` and prints one
line per (coder, L0). With ``--model`` every reconstruction is also spliced into the model at the
site on the store's held-out contexts (:func:`mechscope.coding.splice.splice_loss_fn`), for loss and loss recovered vs L0
beside the clean, zero-ablation, mean-ablation and rock baselines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechscope.atomic import atomic_write_bytes
from mechscope.coding.base import CodingConfig
from mechscope.coding.from_store import frontier_from_store
from mechscope.coding.frontier import FrontierConfig, FrontierResult, frontier, sweep_encoder  # noqa: F401  (re-exported)
from mechscope.coding.plots import save_frontier_plots
from mechscope.coding.splice import splice_loss_fn  # noqa: F401  (re-exported)
from mechscope.config import add_arguments, from_namespace, positive_int
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.models.resolve import RunOn, language_model
from mechscope.preflight import check_inputs, sae_fits_store, writable_folder
from mechscope.sae.io import add_load_arguments


def add_frontier_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mechscope frontier``: the inputs, then FrontierConfig and CodingConfig (``--coding-*``; k is swept)."""
    parser.add_argument(
        "--sae",
        required=True,
        help="a saved dictionary: its folder (any format mechscope reads), or a hub id org/name[:subfolder] "
        "in the Hugging Face cache",
    )
    parser.add_argument("--store", required=True, help="activation store folder")
    parser.add_argument("--site", required=True, help="site name in the store the SAE was trained on")
    parser.add_argument("--out", required=True, help="output folder for frontier.json and the plots")
    parser.add_argument(
        "--model",
        default=None,
        help="'smollm2' or a local Hugging Face folder: splice into it for loss curves (none: FVU only)",
    )
    parser.add_argument(
        "--loss-contexts", type=positive_int, default=16, help="held-out contexts each splice is scored on"
    )
    parser.add_argument(
        "--force-site", action="store_true", help="use --site even if the SAE's cfg.json records another site"
    )
    add_arguments(parser, FrontierConfig)
    add_load_arguments(parser)
    add_arguments(parser, CodingConfig, prefix="coding_", skip=("k",))
    add_arguments(parser, RunOn)  # the coders and --model run on --device; --dtype is --model's
    add_json_flag(parser)


def run_frontier(args: argparse.Namespace) -> int:
    """The ``mechscope frontier`` command; 0 on success. ``--json``: the frontier (as frontier.json) on stdout."""
    check_inputs(args, ["sae", "store", "model"])
    with human_lines_to_stderr(args.json) as stdout:
        result = frontier_from_args(args)
    if args.json:
        print_json({"out": args.out, **result.to_dict()}, stdout)
    return 0


def frontier_from_args(args: argparse.Namespace) -> FrontierResult:
    """Load the SAE, the store and (``--model``) the model, sweep, write the JSON and plots; returns the result."""
    from mechscope.sae import load_sae  # imported here: the CLI must start even where these are heavy
    from mechscope.store import ActivationStore

    cfg = from_namespace(FrontierConfig, args)
    coding = from_namespace(CodingConfig, args, prefix="coding_")
    on = from_namespace(RunOn, args)
    writable_folder(args.out)
    sae = load_sae(args.sae, scaling_factor=args.sae_scaling_factor)
    store = ActivationStore(args.store)
    args.site = sae_fits_store(sae, args.sae, store, args.site, force_site=getattr(args, "force_site", False))
    lm = None
    if args.model is not None:
        lm = language_model(args.model, device=on.device, dtype=on.dtype)
    result = frontier_from_store(sae, store, args.site, cfg, coding, lm, args.loss_contexts, on.torch_device)
    if result.baselines:
        print("baselines (nats): " + ", ".join(f"{k} {v:.4f}" for k, v in result.baselines.items()))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "frontier.json", json.dumps(result.to_dict(), indent=1, default=float).encode())
    save_frontier_plots(result, out)
    print(summary(result))
    return result


def summary(result: FrontierResult) -> str:
    """A plain table: coder, target and achieved L0, FVU, Jaccard with the encoder, span cosine, speed, spliced loss.

    A target k marked ``*`` was not reached (achieved L0 under 95% of k); a footnote says so."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{'coder':<15}{'k':>6}{'L0':>9}{'FVU':>9}{'jaccard':>9}{'span_cos':>9}{'rows/s':>9}{'loss':>9}"]
    rows = ([result.native] if result.native else []) + sorted(result.points, key=lambda p: (p.k or 0, p.coder))
    for p in rows:
        k = "native" if p.k is None else f"{p.k}*" if p.below_target else str(p.k)
        speed = "-" if p.rows_per_s is None else f"{p.rows_per_s:.0f}"
        lines.append(
            f"{p.coder:<15}{k:>6}{p.stats['l0']:>9.2f}{p.stats['fvu']:>9.4f}{fmt(p.jaccard):>9}"
            f"{fmt(p.span_cosine):>9}{speed:>9}{fmt(p.loss.get('loss')):>9}"
        )
    if any(p.below_target for p in result.points):
        lines.append("* target k not reached: the coder gave fewer latents (the L0 column is what it achieved)")
    return "\n".join(lines)
