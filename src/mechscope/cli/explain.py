"""``mechscope explain --sae DIR --store DIR [--site SITE] [--model smollm2] [--out DIR] [--json]``.

Loads the dictionary, the store and the tokenizer's model, then explains (and scores) latents with
:func:`mechscope.explain.run.run_explain`; ``explanations.json`` goes next to the dictionary unless ``--out`` is
given, and ``mechscope report`` shows it on the latent cards. ``--explainer endpoint --endpoint URL
--endpoint-model NAME`` writes (and judges) with an OpenAI-compatible chat server instead of the local model.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.errors import UsageError
from mechscope.explain.endpoint import Endpoint
from mechscope.explain.evidence import EvidenceConfig, EvidenceSource
from mechscope.explain.explainers import ExplainerConfig, HFWriter, make_writer
from mechscope.explain.run import ExplainConfig, read_explanations, run_explain, summary_lines
from mechscope.explain.types import Judge
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.models.resolve import RunOn, language_model
from mechscope.preflight import check_inputs, sae_fits_store, sae_metadata, writable_folder
from mechscope.sae.io import add_load_arguments, sae_location


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sae",
        required=True,
        help="a saved dictionary (SAE, transcoder, cross-layer transcoder): its folder, or a hub id "
        "org/name[:subfolder] in the Hugging Face cache",
    )
    parser.add_argument("--store", required=True, help="activation store folder (its val split gives the evidence)")
    parser.add_argument(
        "--site",
        nargs="+",
        default=None,
        help="site(s) the dictionary reads (a cross-layer transcoder: every layer's MLP input, in order); "
        "default: the site in its cfg.json, else the store's only site",
    )
    parser.add_argument(
        "--model", default="smollm2", help="the model the store was read from (its tokenizer decodes the windows)"
    )
    parser.add_argument(
        "--out", default=None, help="folder for explanations.json (default: the dictionary's own folder)"
    )
    parser.add_argument(
        "--force-site", action="store_true", help="use --site even if the dictionary's cfg.json records another site"
    )
    add_config_arguments(parser, ExplainConfig)
    add_config_arguments(parser, EvidenceConfig, skip=("seed",))  # one --seed, ExplainConfig's, for both
    add_config_arguments(parser, ExplainerConfig)
    add_config_arguments(parser, RunOn)
    add_load_arguments(parser)
    add_json_flag(parser)


def _site(args: argparse.Namespace, sae: Any, store: Any) -> str | tuple[str, ...]:
    """The store site (or sites side by side) the dictionary reads, checked against its width."""
    given = args.site
    if not given:
        recorded = sae_metadata(args.sae).get("site")
        given = (recorded if isinstance(recorded, list) else [recorded]) if recorded else None
    if not given:
        if len(store.sites) != 1:
            raise UsageError(f"--site is needed: store {store.path} holds {', '.join(store.sites)}")
        given = store.sites
    if len(given) == 1:
        return sae_fits_store(sae, args.sae, store, given[0], force_site=args.force_site)
    sites = tuple(store.site_name(s) for s in given)
    width = sum(store.d(s) for s in sites)
    if width != sae.cfg.d_in:
        raise UsageError(
            f"the dictionary in {args.sae} reads {sae.cfg.d_in}-wide rows but sites {', '.join(sites)} of store "
            f"{store.path} are {width} wide side by side; give the sites it was trained on"
        )
    return sites


def run(args: argparse.Namespace) -> int:
    check_inputs(args, ["sae", "store", "model", "out"])
    cfg = from_namespace(ExplainConfig, args)
    ecfg = from_namespace(EvidenceConfig, args, seed=cfg.seed)
    xcfg = from_namespace(ExplainerConfig, args)
    on = from_namespace(RunOn, args)
    with human_lines_to_stderr(args.json) as stdout:
        from mechscope.sae import load_sae
        from mechscope.store import ActivationStore

        t0 = time.time()
        folder = sae_location(args.sae)
        out = writable_folder(args.out if args.out is not None else (folder if folder.is_dir() else folder.parent))
        sae = load_sae(args.sae, device=on.torch_device, scaling_factor=args.sae_scaling_factor)
        store = ActivationStore(args.store)
        site = _site(args, sae, store)
        lm = language_model(args.model, device=on.device, dtype=on.dtype)
        writer = (
            HFWriter(lm, xcfg.generate_batch, xcfg.answer_start)  # the store's model explains: loaded once
            if xcfg.explainer == "hf" and xcfg.explainer_model == args.model
            else make_writer(xcfg, on.device, on.dtype)
        )
        judge: Judge | None = None
        if cfg.score and isinstance(writer, Endpoint):  # an endpoint judges with the same server
            judge = writer
        elif cfg.score and isinstance(writer, HFWriter):  # the local explainer's model judges, or judge_model
            from mechscope.explain.judge import HFJudge

            same = not cfg.judge_model or cfg.judge_model == xcfg.explainer_model
            judge_lm = writer.loaded if same else lm if cfg.judge_model == args.model else cfg.judge_model
            judge = HFJudge(judge_lm, device=on.device, dtype=cfg.judge_dtype)
        from mechscope.report.from_store import token_decoder

        print(
            f"loaded {type(sae).__name__} ({sae.latents} latents), store and {lm.model_id} in {time.time() - t0:.1f}s"
        )
        source = EvidenceSource(sae, store, site, token_decoder(lm.tokenizer), ecfg)
        print(f"scanned {source.n_rows:,} held-out rows in {time.time() - t0:.1f}s")
        settings = {"dictionary": str(folder.resolve()), "store": str(store.path.resolve()), "site": site}
        outcome = run_explain(source, writer, out, cfg, xcfg, judge=judge, settings=settings)
        results = read_explanations(out)
        summary = outcome.to_dict()
        scored = [r["scores"] for r in results.values() if r.get("scores")]
        if scored:
            from mechscope.explain.scoring import LatentScore, summarise

            summary["scores"] = summarise([LatentScore.from_json(s) for s in scored])
        for line in summary_lines(outcome, [results[i] for i in sorted(results)][:20]):
            print(line)
    if args.json:
        print_json(summary, stdout)
    return 0
