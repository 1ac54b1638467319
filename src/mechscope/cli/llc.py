"""``mechscope llc``: the local learning coefficient of a trained model, or of a known-answer model.

    mechscope llc --known rrr:5,3,5,0 [--json]          λ̂ ± SE beside the true λ
    mechscope llc --model mlp [--out DIR] [--json]      λ̂ ± SE, 2λ̂ beside the parameter count, HTML report
    mechscope llc --model zoo:modadd --checkpoints      λ̂ along training, plotted into the report

Under torchrun the chains of each estimate are dealt out over the ranks (``torchrun --nproc-per-node 4 -m mechscope
llc …``: chain c on rank c mod 4; the same λ̂ as one process); rank 0 writes and prints. The calibration's pilots
run on every rank alike.

ε and γ are chosen by the automatic sweep (:mod:`mechscope.slt.calibrate`) unless ``--no-calibrate``;
then ``--epsilon`` and ``--gamma`` are used as given. The report is one HTML file (``DIR/report.html``)
written with :func:`mechscope.report.write_report`'s extra sections (the report package has no
generic plug-in hook beyond those, so the section is assembled here); ``DIR/llc.json`` holds the numbers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from mechscope.atomic import atomic_write_json, ensure_folder, remove_stale_temporaries
from mechscope.config import add_arguments, from_namespace, positive_int, to_dict
from mechscope.distributed import World, WorldConfig
from mechscope.errors import UsageError, flag_names
from mechscope.jsonout import plain, print_json
from mechscope.models.resolve import RunOn
from mechscope.preflight import check_outputs
from mechscope.slt.calibrate import CalibrationConfig, CalibrationResult, calibrate, sweep_figure
from mechscope.slt.checkpoints import checkpoints_figure, every_kth, llc_along, trace_figure
from mechscope.slt.estimator import LLCConfig, LLCResult, estimate_llc


def add_arguments_llc(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mechscope llc``: what to measure, then LLCConfig and CalibrationConfig (``--cal-*``)."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--known", metavar="SPEC", help="known-answer model: regular:d, monomial:k1,k2[+k3,…], rrr:M,H,N,r"
    )
    what.add_argument("--model", metavar="SPEC", help="mlp (built-in example), zoo:NAME, or python:MODULE:FUNCTION")
    parser.add_argument("--checkpoints", action="store_true", help="estimate λ̂ at every training checkpoint of --model")
    parser.add_argument(
        "--checkpoint-stride",
        type=positive_int,
        default=1,
        metavar="K",
        help="with --checkpoints: every K-th checkpoint (the first and the last always)",
    )
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="choose ε and γ by the automatic sweep (--no-calibrate: use --epsilon and --gamma)",
    )
    parser.add_argument("--n", type=positive_int, default=10_000, help="rows of data for a --known model")
    parser.add_argument("--out", default="out/llc", help="folder for report.html, llc.json and the plots (--model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_arguments(parser, LLCConfig)
    add_arguments(parser, CalibrationConfig, prefix="cal_")
    add_arguments(parser, RunOn)
    add_arguments(parser, WorldConfig)


def run_on(args: argparse.Namespace) -> RunOn:
    """``--device`` / ``--dtype``: float32 only, SGLD's steps (ε/2·∇ and noise of scale √ε, ε ~ 1e-4) being below bf16's
    and fp16's resolution near weights of order 1, so λ̂ would be computed on a guess."""
    with flag_names({"device": "--device", "dtype": "--dtype"}):
        return from_namespace(RunOn, args).limited_to(
            "llc",
            f"SGLD steps of size ~ε are lost to {args.dtype}'s rounding and λ̂ would be a guess"
            if hasattr(args, "dtype")
            else "",
        )


def _configs(args: argparse.Namespace) -> tuple[LLCConfig, CalibrationConfig | None]:
    cfg = from_namespace(LLCConfig, args)
    cal = from_namespace(CalibrationConfig, args, prefix="cal_") if args.calibrate else None
    return cfg, cal


def _measure(
    model, loss_fn, data, cfg: LLCConfig, cal_cfg: CalibrationConfig | None, progress: bool, world: World
) -> tuple[LLCResult, CalibrationResult | None]:
    cal = None
    if cal_cfg is not None:
        cal = calibrate(model, loss_fn, data, cfg, cal_cfg, progress=progress and world.is_main)
        cfg = cal.final_config(cfg)
    return estimate_llc(model, loss_fn, data, cfg, progress=progress, world=world), cal


# The files run_model writes into --out.
OUTPUTS = ("report.html", "llc.json", "llc_checkpoints.png", "llc_traces.png", "llc_sweep.png")


def run_known(args: argparse.Namespace, device: torch.device, world: World) -> dict[str, Any]:
    """``--known SPEC``: λ̂ beside the analytic λ."""
    from mechscope.slt.known import known_model

    cfg, cal_cfg = _configs(args)
    km = known_model(args.known, n=args.n, seed=cfg.seed, name="--known")
    res, cal = _measure(
        km.model.to(device),
        km.loss_fn,
        (km.inputs.to(device), km.targets.to(device)),
        cfg,
        cal_cfg,
        not args.no_progress,
        world,
    )
    return {
        "spec": km.spec,
        "llc_true": km.llc_true,
        "multiplicity": km.multiplicity,
        "n_params": km.n_params,
        "rel_error": (res.llc_hat - km.llc_true) / km.llc_true,
        **res.summary(),
        "calibration": None if cal is None else cal.to_dict(),
    }


def run_model(args: argparse.Namespace, device: torch.device, world: World) -> dict[str, Any]:
    """``--model SPEC`` (optionally ``--checkpoints``): λ̂, 2λ̂ beside the parameter count, the report (rank 0
    writes it; the other ranks return {} once their chains are gathered)."""
    from mechscope.report import Section, write_report
    from mechscope.report.figures import save_png
    from mechscope.report.markup import table
    from mechscope.slt.targets import load_target

    cfg, cal_cfg = _configs(args)
    progress = not args.no_progress
    with flag_names({"model": "--model"}):
        target = load_target(args.model, device=device)
    n_params = sum(p.numel() for p in target.model.parameters() if p.requires_grad)
    if world.is_main:
        out = ensure_folder(args.out)
        remove_stale_temporaries(out, OUTPUTS)  # left by a run killed mid-write
    figures: list[tuple[str, Any]] = []
    if args.checkpoints:
        if not target.checkpoints:
            raise UsageError(
                f"{target.name} has no training checkpoints: drop --checkpoints or save checkpoints while training"
            )
        chosen = every_kth(target.checkpoints, args.checkpoint_stride)
        points, cal = llc_along(
            chosen,
            target.loss_fn,
            target.data,
            cfg,
            calibration=cal_cfg,
            val_data=target.val_data,
            progress=progress and world.is_main,
            accuracy=target.accuracy,
            world=world,
        )
        res = points[-1].result
        if not world.is_main:
            return {}
        fig = checkpoints_figure(points, f"λ̂ along training of {target.name}")
        save_png(fig, out / "llc_checkpoints.png")
        figures.append(("λ̂ (± 2 SE) at each checkpoint, with the training and held-out loss", fig))
        extra = {"checkpoints": [p.to_dict() for p in points]}
    else:
        res, cal = _measure(target.model, target.loss_fn, target.data, cfg, cal_cfg, progress, world)
        extra = {}
    if not world.is_main:
        return {}
    trace = trace_figure(res, f"SGLD chains at {'the last checkpoint of ' if args.checkpoints else ''}{target.name}")
    save_png(trace, out / "llc_traces.png")
    figures.append(("per-chain loss traces and running λ̂", trace))
    if cal is not None:
        sweep = sweep_figure(cal)
        save_png(sweep, out / "llc_sweep.png")
        figures.append(("calibration sweep over ε and γ (filled: healthy pilots; star: chosen)", sweep))
    result = {
        "model": target.name,
        "n_params": n_params,
        "effective_params": 2 * res.llc_hat,
        **res.summary(),
        "calibration": None if cal is None else cal.to_dict(),
        **extra,
    }
    rows = [
        ("λ̂ ± SE", f"{res.llc_hat:.4g} ± {res.llc_se:.2g}"),
        ("2λ̂ (effective parameter count)", f"{2 * res.llc_hat:.4g}"),
        ("raw parameter count", f"{n_params:,}"),
        ("nβ", f"{res.nbeta:.4g}"),
        ("L_n(w*) (full data)", f"{res.init_loss:.5g}"),
        ("MALA acceptance", f"{res.mala_accept:.3f}"),
        ("R̂ (losses)", f"{res.rhat:.3f}"),
        ("fraction of draws below L_n(w*)", f"{res.frac_negative:.3f}"),
    ]
    text = "λ̂ = nβ (mean sampled loss − L_n(w*)), L_n(w*) on the full data set. " + (
        "Warnings: " + " | ".join(res.warnings) if res.warnings else "No diagnostic warnings."
    )
    section = Section(
        "Local learning coefficient",
        text=text,
        html=table(None, rows, classes=("", "num"), row_headers=True),
        figures=tuple(figures),
    )
    report = write_report(
        out / "report.html",
        title=f"mechscope llc: {target.name}",
        config={"llc": to_dict(cfg), "calibration": None if cal_cfg is None else to_dict(cal_cfg)},
        sections=[section],
    )
    atomic_write_json(out / "llc.json", plain(result))
    result["report"] = str(report)
    return result


def run(args: argparse.Namespace) -> int:
    """The ``mechscope llc`` command; 0 on success."""
    if args.checkpoints and args.model is None:
        raise UsageError("--checkpoints needs --model (a model with saved training checkpoints)")
    if args.checkpoint_stride < 1:
        raise UsageError(f"--checkpoint-stride must be ≥ 1, got {args.checkpoint_stride}")
    dev = run_on(args).torch_device  # refused here, before any model is built or trained
    if args.known is None:  # --known writes nothing
        check_outputs(args, folders=["out"])
    with flag_names({"collective_timeout_s": "--collective-timeout-s", "device": "--device"}):
        world = World.from_env(run_on(args).device, from_namespace(WorldConfig, args).collective_timeout_s)
    try:
        dev = torch.device(world.device)  # under torchrun: this rank's own GPU
        result = run_known(args, dev, world) if args.known is not None else run_model(args, dev, world)
    finally:
        world.close()
    if not world.is_main:
        return 0
    if args.json:
        print_json(result)
        return 0
    d = result["diagnostics"]
    print(
        f"λ̂ = {result['llc_hat']:.4g} ± {result['llc_se']:.2g} (SE over {len(result['llc_chains'])} chains), "
        f"nβ = {result['nbeta']:.4g}, L_n(w*) = {result['init_loss']:.5g}"
    )
    if args.known:
        print(
            f"true λ = {result['llc_true']:.4g} ({result['spec']}, multiplicity {result['multiplicity']}): "
            f"relative error {100 * result['rel_error']:+.1f}%"
        )
    else:
        print(
            f"effective parameter count 2λ̂ = {result['effective_params']:.4g} beside {result['n_params']:,} parameters"
        )
        for p in result.get("checkpoints", []):
            print(
                f"  step {p['step']:>7}: λ̂ = {p['llc_hat']:.4g} ± {p['llc_se']:.2g}, train loss {p['train_loss']:.4g}"
                + (f", held-out loss {p['val_loss']:.4g}" if p["val_loss"] is not None else "")
                + (f", held-out accuracy {p['val_acc']:.3f}" if p.get("val_acc") is not None else "")
            )
        print(f"report: {result['report']}")
    cal = result.get("calibration")
    if cal:
        print(
            f"calibrated: ε = {cal['epsilon']:.3g}, γ = {cal['gamma']:g}"
            + ("" if cal["found_plateau"] else " (no healthy plateau found: treat λ̂ with caution)")
        )
        chk = cal.get("gamma_check")
        if chk:
            print(
                f"γ check: at γ = {chk['gamma']:g} the pilot gives λ̂ = {chk['llc']:.4g} ± {chk['se']:.2g} ("
                + (
                    "agrees: λ̂ is stable in γ)"
                    if chk["agree"]
                    else "disagrees: λ̂ still depends on γ, localisation bias may remain)"
                )
            )
    print(
        f"diagnostics: MALA acceptance {d['mala_accept']:.3f}, R̂ {d['rhat']:.3f}, "
        f"{100 * d['frac_negative']:.1f}% of draws below L_n(w*)"
    )
    for w in d["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0
