"""``mechscope report --sae DIR --store DIR --site SITE --model smollm2 --out FILE``.

Loads the SAE, the activation store and the model from flags, then builds the report with
:func:`mechscope.report.from_store.report_from_store`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.errors import UsageError, flag_names
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.models.resolve import RunOn, language_model
from mechscope.preflight import check_inputs, sae_fits_store, sae_metadata, writable_file
from mechscope.report.build import ReportConfig, ReportOutcome, frontier_points
from mechscope.report.figures import is_png
from mechscope.report.from_store import explanation_lines, report_from_store
from mechscope.report.html import Section
from mechscope.sae.io import add_load_arguments, sae_location


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sae",
        required=True,
        help="a saved dictionary: its folder (any format mechscope reads), or a hub id org/name[:subfolder] "
        "in the Hugging Face cache",
    )
    parser.add_argument("--store", required=True, help="activation store folder (its val split is the held-out data)")
    parser.add_argument(
        "--site",
        default=None,
        help="site the SAE reads (a store site name or alias); "
        "default: the SAE's metadata 'site', else the store's only site",
    )
    parser.add_argument(
        "--model", default="smollm2", help="'smollm2' or a local Hugging Face folder: the model the store was read from"
    )
    parser.add_argument("--out", default="report.html", help="HTML file to write")
    parser.add_argument(
        "--frontier",
        default=None,
        help="JSON of a sparse-coding frontier (FrontierResult.to_dict()) to draw beside this SAE",
    )
    parser.add_argument(
        "--figures", nargs="+", default=(), help="PNG files to add as an extra section (e.g. frontier plots)"
    )
    parser.add_argument(
        "--force-site", action="store_true", help="use --site even if the SAE's cfg.json records another site"
    )
    add_config_arguments(parser, ReportConfig)
    add_config_arguments(parser, RunOn)
    add_load_arguments(parser)
    add_json_flag(parser)


def _site(args: argparse.Namespace, store: Any) -> str:
    if args.site:
        return store.site_name(args.site)
    meta = sae_metadata(args.sae)
    for key in ("site", "hook_name"):
        if meta.get(key):
            return store.site_name(meta[key])
    if len(store.sites) == 1:
        return store.sites[0]
    raise UsageError(f"--site is needed: store {store.path} holds {', '.join(store.sites)}")


def _read_frontier(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--frontier {path}: no such file; write one with `mechscope frontier`") from None
    except (ValueError, OSError) as err:
        raise UsageError(f"--frontier {path}: not a JSON file ({err})") from err


def run_report(args: argparse.Namespace) -> int:
    """``mechscope report``; ``--json``: :meth:`ReportOutcome.to_dict` on stdout, the progress on stderr."""
    check_inputs(args, ["sae", "store", "model", "frontier", "figures"])
    with human_lines_to_stderr(args.json) as stdout:
        outcome = _report(args)
    if args.json:
        print_json(outcome.to_dict(), stdout)
    return 0


def _report(args: argparse.Namespace) -> ReportOutcome:
    from mechscope.sae import load_sae
    from mechscope.store import ActivationStore

    t0 = time.time()
    cfg = from_namespace(ReportConfig, args)
    on = from_namespace(RunOn, args)
    writable_file(args.out)
    for f in args.figures:
        if not Path(f).is_file():
            raise UsageError(f"--figures {f}: no such file")
        if not is_png(f):
            raise UsageError(
                f"--figures {f}: not a PNG file (it lacks the PNG signature); give PNG plots, e.g. those "
                "`mechscope frontier` writes"
            )
    sae = load_sae(args.sae, scaling_factor=args.sae_scaling_factor)
    store = ActivationStore(args.store)
    site = sae_fits_store(sae, args.sae, store, _site(args, store), force_site=args.force_site)
    lm = language_model(args.model, device=on.device, dtype=on.dtype)
    if store.manifest.get("model_id") not in (None, lm.model_id):
        print(f"warning: the store was read from {store.manifest.get('model_id')}, the model loaded is {lm.model_id}")
    print(
        f"loaded SAE ({type(sae).__name__}, {sae.latents} latents), store ({store.n_rows('val'):,} held-out rows) "
        f"and {lm.model_id} in {time.time() - t0:.1f}s"
    )

    extra_points = frontier_points(_read_frontier(Path(args.frontier))) if args.frontier else []
    sections = (
        [Section("Extra figures", figures=tuple((Path(f).name, Path(f)) for f in args.figures))] if args.figures else []
    )
    run_config = {
        "sae": str(Path(args.sae).resolve()),
        "sae_architecture": type(sae).__name__,
        "latents": sae.latents,
        "d": sae.d_in,
        "store": str(store.path.resolve()),
        "site": site,
        "model": lm.model_id,
        "held_out_rows": store.n_rows("val"),
        "context_length": store.manifest.get("context_length"),
    }
    with flag_names({"val_tokens": "--val-tokens"}):
        outcome = report_from_store(
            args.out,
            sae,
            store,
            site,
            lm,
            cfg,
            run_config=run_config,
            extra_points=extra_points,
            sections=sections,
            explanations=explanation_lines(sae_location(args.sae)),  # explanations.json of `mechscope explain`
        )
    for line in outcome.summary_lines():
        print(line)
    print(f"done in {time.time() - t0:.0f}s")
    return outcome


# The names the main CLI's command table looks for.
add_arguments = add_report_arguments
run = run_report
