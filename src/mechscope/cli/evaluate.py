"""``mechscope evaluate``: reconstruction metrics on held-out rows and loss recovered beside the baselines.

The evaluation itself is :func:`mechscope.evals.evaluate.evaluate_sae`; this module loads the SAE, the store and
the model from flags, checks that they fit together, and prints or writes the results.
"""

from __future__ import annotations

import argparse
import json

from mechscope.atomic import atomic_write_bytes
from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.errors import UsageError
from mechscope.evals.evaluate import EvaluateConfig, evaluate_sae, reconstruction_metrics  # noqa: F401  (re-exported)
from mechscope.evals.splice import SpliceResult
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, plain, print_json
from mechscope.models.resolve import RunOn, language_model
from mechscope.preflight import check_inputs, sae_fits_store, sae_metadata, writable_file
from mechscope.sae.io import add_load_arguments
from mechscope.store import ActivationStore


def summary_lines(rec: dict[str, float], splice: SpliceResult) -> list[str]:
    lines = [
        f"reconstruction on {int(rec['rows']):,} held-out rows: FVU {rec['fvu']:.4f}  L0 {rec.get('l0', float('nan')):.1f}  "
        f"dead {_pct(rec.get('dead_fraction'))}  dense {_pct(rec.get('dense_fraction'))}  "
        f"cos {rec['cosine']:.3f}  ‖x̂‖/‖x‖ {rec['norm_ratio']:.3f}"
    ]
    return lines + splice.summary_lines()


def _pct(v: float | None) -> str:
    """A fraction as a percentage, or n/a when the metric is missing."""
    return "n/a" if v is None or v != v else f"{v:.2%}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sae",
        required=True,
        help="a saved dictionary: its folder (any format mechscope reads), or a hub id org/name[:subfolder] "
        "in the Hugging Face cache",
    )
    parser.add_argument("--store", required=True, help="activation store folder (its val split is used)")
    parser.add_argument("--site", required=True, help="site the SAE reads (a store site name or alias)")
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a local Hugging Face folder")
    parser.add_argument("--results", default=None, help="also write the results to this JSON file")
    add_json_flag(parser)
    parser.add_argument(
        "--target-site",
        default=None,
        help="transcoders: the site their prediction replaces (default: the target_site in their cfg.json)",
    )
    parser.add_argument(
        "--force-site", action="store_true", help="evaluate at --site even if the SAE's cfg.json records another site"
    )
    add_config_arguments(parser, EvaluateConfig)
    add_config_arguments(parser, RunOn)
    add_load_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``mechscope evaluate``; ``--json``: the results on stdout, the summary on stderr."""
    check_inputs(args, ["sae", "store", "model"])
    cfg = from_namespace(EvaluateConfig, args)
    on = from_namespace(RunOn, args)
    if args.results is not None:  # an empty --results is refused, not skipped
        writable_file(args.results, "--results")
    with human_lines_to_stderr(args.json) as stdout:
        results = _evaluate(args, cfg, on)
    if args.json:
        print_json(results, stdout)
    return 0


def _evaluate(args: argparse.Namespace, cfg: EvaluateConfig, on: RunOn) -> dict:
    """Evaluate, print the summary, write ``--results``; returns {"reconstruction": …, "splice": …}."""
    from mechscope.sae import load_sae

    sae, store = load_sae(args.sae, scaling_factor=args.sae_scaling_factor), ActivationStore(args.store)
    n_sites = getattr(sae.cfg, "sites", 1)
    if n_sites != 1:
        raise UsageError(
            f"{args.sae} holds a crosscoder over {n_sites} sites; `mechscope evaluate` splices one site "
            "(for a crosscoder: bench/crosscoder_smollm2.py)"
        )
    target = args.target_site or (sae_metadata(args.sae).get("target_site") if getattr(sae, "paired", False) else None)
    if getattr(sae, "paired", False) and not target:
        raise UsageError(f"the transcoder in {args.sae} records no target site; pass --target-site (e.g. mlp_out.6)")
    if target and not getattr(sae, "paired", False):
        raise UsageError(
            f"--target-site is for transcoders; the SAE in {args.sae} reconstructs the site it reads: drop it"
        )
    site = sae_fits_store(sae, args.sae, store, args.site, force_site=args.force_site, target_site=target)
    if store.n_rows("val") == 0:
        raise UsageError(f"store {store.path} has no held-out (val) rows to evaluate on; harvest with --val-tokens > 0")
    rec, splice = evaluate_sae(
        sae, store, site, language_model(args.model, device=on.device, dtype=on.dtype), cfg, target_site=target
    )
    for line in summary_lines(rec, splice):
        print(line)
    results = {"reconstruction": rec, "splice": splice.to_dict()}
    if args.results:
        atomic_write_bytes(args.results, json.dumps(plain(results), indent=1).encode())
        print(f"results: {args.results}")
    return results
