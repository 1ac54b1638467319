"""``mechscope probe --sae DIR [DIR …] [--model smollm2] [--site resid_post.6] [--concepts …] [--out DIR] [--json]``.

Sparse probing of concept data sets built offline (:mod:`mechscope.probing.concepts`) on each dictionary's latents,
beside the same k-sparse probe on the model's activations at the site, on k random directions and the dense probe;
then first-letter absorption of each dictionary (:mod:`mechscope.probing.absorption`). Prints one table per concept
and the absorption table; ``--out`` also writes ``probe.json``, ``report.html`` and the activations, which a later run
into the same folder reuses (probing another dictionary costs no model pass).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechscope.atomic import atomic_write_json
from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.errors import UsageError, flag_names
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, plain, print_json
from mechscope.models.resolve import RunOn, resolve_model
from mechscope.preflight import check_inputs, writable_folder
from mechscope.probing.absorption import LetterConfig
from mechscope.probing.concepts import ConceptConfig
from mechscope.probing.run import ACTIVATIONS_FILE, ProbeRunConfig, html_tables, probe
from mechscope.probing.sparse import ProbeConfig
from mechscope.sae.io import add_load_arguments, load_sae


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sae",
        required=True,
        nargs="+",
        help="one or more dictionaries trained on --site (folders of `mechscope train`, SAELens or sparsify folders, "
        "or hub ids in the local cache); each is probed on the same activations",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="also write probe.json, report.html and activations.safetensors into this folder; a later run with the "
        "same --out, model, site and data reads the activations back instead of running the model",
    )
    add_load_arguments(parser)
    for cls in (ProbeRunConfig, ConceptConfig, ProbeConfig, LetterConfig, RunOn):
        add_config_arguments(parser, cls)
    add_json_flag(parser)


def _names(paths: list[str]) -> list[str]:
    """A short, distinct name per dictionary: its folder's last two parts (the whole path if those repeat)."""
    short = ["/".join(Path(p).parts[-2:]) for p in paths]
    return short if len(set(short)) == len(short) else list(paths)


def run(args: argparse.Namespace) -> int:
    check_inputs(args, ["out"])
    if any(p == "" for p in args.sae):
        raise UsageError("--sae has an empty path; give each dictionary's folder")
    run_cfg = from_namespace(ProbeRunConfig, args)
    concepts = from_namespace(ConceptConfig, args)
    probes = from_namespace(ProbeConfig, args)
    letters = from_namespace(LetterConfig, args)
    on = from_namespace(RunOn, args)
    out = writable_folder(args.out) if args.out else None
    with human_lines_to_stderr(args.json) as stdout:
        with flag_names({"model": "--model"}):
            subject = resolve_model(run_cfg.model, device=on.device, dtype=on.dtype)
        if subject.loaded is None:
            raise UsageError(f"--model {run_cfg.model!r} is a {subject.kind} model; probe reads language models")
        saes = {
            name: load_sae(path, on.torch_device, scaling_factor=args.sae_scaling_factor)
            for name, path in zip(_names(args.sae), args.sae)
        }
        with flag_names({"saes": "--sae", "site": "--site"}):
            result = probe(
                subject.loaded.model,
                subject.loaded.tokenizer,
                saes,
                run_cfg,
                concepts,
                probes,
                letters,
                log=lambda line: print(line + "\n", flush=True),
                saved=out / ACTIVATIONS_FILE if out is not None else None,
            )
        result["sae_paths"] = dict(zip(saes, args.sae))
        result["model"] = run_cfg.model
        if out is not None:
            from mechscope.report.html import Section, write_report

            atomic_write_json(out / "probe.json", plain(result))
            report = write_report(
                out / "report.html",
                title=f"probing {run_cfg.model} at {run_cfg.site}",
                config=plain(result["config"]),
                sections=[Section(title, html=html) for title, html in html_tables(result)],
            )
            print(f"report: {report}")
    if args.json:
        print_json(plain(result), stdout)
    return 0
