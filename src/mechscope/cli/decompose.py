"""``mechscope decompose --model toy:tms|toy:resid-mlp|zoo:modadd|PATH``: SPD with known answers.

Trains (or resumes, from ``--out``) a stochastic parameter decomposition of the model, then writes
``decompose.json``, the plots and ``report.html`` (recovery table, co-activation view, the importances of probe
inputs, one dashboard per alive subcomponent: the inputs that need it most) to ``--out``; ``--json`` prints the
result as one object (keys ``mmcs`` and ``true_mechanisms``, null where the truth is unknown, and ``alive``).
Models come from :data:`mechscope.decompose.targets.MODELS` (name → builder); anything else is read as a path.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from mechscope.atomic import atomic_write_json, remove_stale_temporaries
from mechscope.config import add_arguments as add_config_arguments, from_namespace, to_dict
from mechscope.decompose import plots
from mechscope.decompose.analysis import coactivation, dashboards
from mechscope.decompose.config import SPDConfig
from mechscope.decompose.run import DTYPE_REFUSAL, decompose
from mechscope.decompose.targets import MODELS, SPD_DEFAULTS, build_target
from mechscope.decompose.toys import TargetConfig
from mechscope.decompose.train import CHECKPOINT
from mechscope.errors import flag_names
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, plain, print_json
from mechscope.models.resolve import RunOn
from mechscope.preflight import writable_folder
from mechscope.report.card import CardContext, LatentCard, latent_card
from mechscope.report.html import Section, write_report
from mechscope.report.markup import table
from mechscope.toy.plots import save


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=f"{' | '.join(MODELS)} | PATH (a Hugging Face model folder)")
    parser.add_argument(
        "--out", default=None, help="folder for the checkpoint, JSON, plots and report (default out/decompose/<model>)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="ignore (delete) a checkpoint in --out instead of resuming it"
    )
    add_json_flag(parser)
    add_config_arguments(parser, SPDConfig)
    add_config_arguments(parser, TargetConfig, skip=("batch_size", "seed"))
    add_config_arguments(parser, RunOn)


def _dashboards_html(ds) -> str:
    """One latent card per alive subcomponent: its statistics, then the inputs that need it most (g before each)."""
    cards = (
        LatentCard(
            anchor=f"sub-{d.target}-{d.index}",
            title=f"{d.target} / {d.index}",
            search_text=f"{d.target}/{d.index}",
            stats=f"needed by {100 * d.density:.2f}% of evaluation inputs (g > t); ‖U Vᵀ‖_F = {d.norm:.3f}",
            contexts=tuple(CardContext(g, desc) for g, desc in d.top),
            contexts_title="inputs that need it most (g)",
        )
        for d in ds
    )
    return f"<div class='latents'>{''.join(latent_card(c) for c in cards)}</div>"


def _recovery_html(res: dict[str, Any]) -> str:
    rows = [
        (n, r["mmcs"], r["matched_mean_cos"], r["alive"], r["true_mechanisms"])
        for n, r in res.get("recovery", {}).items()
    ]
    return (
        table(("target", "MMCS", "Hungarian mean cos", "alive", "true mechanisms"), rows, fmt="{:.3f}")
        if rows
        else "<p class='note'>No known truth for this model.</p>"
    )


def _restarts_text(res: dict[str, Any]) -> str:
    """The restarts' part of the summary: which one was kept and, when another's held-out loss is as low within
    the tolerance (``close_restarts``), that the selection between them is not clear."""
    losses = res["restart_held_out_losses"]
    if len(losses) < 2:
        return ""
    k = res["kept_restart"]
    text = (
        f"; best of {len(losses)} restarts by held-out SPD loss: restart {k} (seed {res['kept_seed']}, {losses[k]:.5g})"
    )
    if res["close_restarts"]:
        others = ", ".join(f"restart {j} ({losses[j]:.5g})" for j in res["close_restarts"])
        text += (
            f". Note: {others} within {100 * res['close_tolerance']:g}% of the kept loss: the held-out loss does "
            "not clearly prefer the kept restart"
        )
    return text


# Every file decompose writes into --out (the first two also into --out/restart-K with --restarts > 1).
OUTPUTS = (
    CHECKPOINT,
    "spd-log.jsonl",
    "decompose.json",
    "report.html",
    "coactivation.png",
    "losses.png",
    "probe-importances.png",
)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    t0 = time.time()
    with flag_names({"device": "--device", "dtype": "--dtype"}):
        run_on = from_namespace(RunOn, args).limited_to("decompose", DTYPE_REFUSAL)
    cfg = from_namespace(
        SPDConfig, args, **{k: v for k, v in SPD_DEFAULTS.get(args.model, {}).items() if not hasattr(args, k)}
    )
    tcfg = from_namespace(TargetConfig, args, batch_size=cfg.batch_size, seed=cfg.seed)
    out = writable_folder(
        args.out if args.out is not None else f"out/decompose/{args.model.replace(':', '-').replace('/', '_')}"
    )
    for folder in (
        out,
        *sorted(out.glob("restart-*")),
    ):  # temporaries of a run killed mid-write (created by the first write)
        remove_stale_temporaries(folder, OUTPUTS)
    if args.fresh:
        (out / "spd-checkpoint.safetensors").unlink(missing_ok=True)
        (out / "spd-log.jsonl").unlink(missing_ok=True)
    with human_lines_to_stderr(args.json) as stdout:
        with flag_names({"model": "--model"}):
            kt = build_target(args.model, tcfg).to(run_on.torch_device)
        res, spd, log, live = decompose(kt, cfg, out, progress=True)
        labels = [f"{n}/{c}" for n, c in live.labels]
        figs = [
            (
                "co-activation of alive subcomponents: P(g_j > t | g_i > t) on the evaluation inputs",
                save(plots.coactivation(coactivation(live), labels), out / "coactivation.png"),
            )
        ]
        if log:
            figs.append(("losses over training", save(plots.losses(log), out / "losses.png")))
        if kt.probes is not None and live.labels:
            x, names = kt.probes
            g = spd.causal_importances(x)
            cols = torch.stack([g[n][..., c].reshape(len(x), -1).max(-1).values for n, c in live.labels], 1)
            figs.append(
                (
                    "causal importance of each alive subcomponent on probe inputs",
                    save(
                        plots.importance_matrix(cols, names, labels, "which subcomponents each probe input needs"),
                        out / "probe-importances.png",
                    ),
                )
            )
        res = {"model": args.model, **(kt.info or {}), **res, "config": to_dict(cfg), "seconds": time.time() - t0}
        atomic_write_json(out / "decompose.json", plain(res))
        text = (
            f"{res.get('model')}: {res['alive']} alive subcomponents over {len(spd.names)} targets "
            f"({', '.join(f'{n}: {k}' for n, k in res['alive_per_target'].items())})"
            + (
                f"; MMCS {res['mmcs']:.3f} against {res['true_mechanisms']} true mechanisms"
                if res["mmcs"] is not None
                else ""
            )
            + _restarts_text(res)
        )
        sections = [
            Section("Recovery of known mechanisms", text=text, html=_recovery_html(res)),
            Section("Interaction view and training", figures=tuple(figs)),
        ]
        if kt.report_html is not None:
            sections.append(Section("Model-specific findings", html=kt.report_html(res)))
        sections.append(
            Section(
                f"Subcomponent dashboards ({len(live.labels)} alive)",
                html=_dashboards_html(dashboards(spd, live, kt.describe)),
            )
        )
        report = write_report(
            out / "report.html", title=f"mechscope decompose {args.model}", config=to_dict(cfg), sections=sections
        )
        res["report"] = str(report)
        if args.json:
            print_json(res, stdout)
        else:
            print(text)
            print(f"wrote {out / 'decompose.json'}, the plots and {report} in {time.time() - t0:.0f}s")
    return 0
