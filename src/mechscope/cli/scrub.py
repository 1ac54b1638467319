"""``mechscope scrub HYPOTHESIS.yaml [--model zoo:NAME|smollm2|PATH] [--examples N] [--seeds S] [--report PATH] [--json]``.

Under torchrun (``torchrun --nproc-per-node 4 -m mechscope scrub …``) the seeds are dealt out over the ranks (seed s
on rank s mod N); the numbers are one process's, and rank 0 writes and prints."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.distributed import World, WorldConfig
from mechscope.errors import UsageError, flag_names
from mechscope.evals.metrics import percent, percent_interval
from mechscope.jsonout import print_json
from mechscope.models.resolve import RunOn
from mechscope.preflight import check_outputs, writable_file
from mechscope.scrub import load_hypothesis, scrub
from mechscope.scrub.report import add_to_report, read_rows, sidecar


@dataclass(frozen=True)
class ScrubRunConfig:
    """What to scrub the hypothesis on (empty or 0: what the hypothesis file says)."""

    model: str = ""
    """zoo:parens | zoo:modadd | zoo:induction | smollm2 | a local Hugging Face folder."""
    examples: int = 0
    """Evaluation examples (references; also the sampling pool unless the hypothesis sets `pool`) (0: the hypothesis's own, default 2000)."""
    seeds: int = 0
    """Resampling seeds for the interval (0: the hypothesis's own, default 8)."""
    report: str = ""
    """Add this run's row to the scrubbing table of the HTML report at this path (created if missing)."""

    def __post_init__(self) -> None:
        if self.examples < 0 or self.seeds < 0 or self.seeds == 1:
            raise UsageError(f"--examples must be ≥ 0 and --seeds 0 or ≥ 2; got {self.examples}, {self.seeds}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hypothesis", help="a hypothesis YAML file (see examples/scrub/)")
    add_config_arguments(p, ScrubRunConfig)
    add_config_arguments(p, RunOn)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_arguments(p, WorldConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_namespace(ScrubRunConfig, args)
    on = from_namespace(RunOn, args)
    check_outputs(args, files=["report"])
    if cfg.report:
        writable_file(sidecar(cfg.report), "--report")  # the rows of the table live beside the page
    hyp = load_hypothesis(args.hypothesis)
    if cfg.report:
        read_rows(cfg.report)  # a report we cannot add to is refused before the work, not after
    with flag_names({"collective_timeout_s": "--collective-timeout-s", "device": "--device"}):
        world = World.from_env(on.device, from_namespace(WorldConfig, args).collective_timeout_s)
    try:  # under torchrun the seeds are dealt out over the ranks; rank 0 writes and prints
        result = scrub(
            cfg.model or None,
            hyp,
            cfg.examples or None,
            cfg.seeds or None,
            progress=not args.json,
            device=world.device,
            dtype=on.dtype,
            world=world,
        )
    finally:
        world.close()
    if not world.is_main:
        return 0
    row = {
        "hypothesis": args.hypothesis,
        "description": hyp.description,
        "model": cfg.model or hyp.model,
        **result.to_dict(),
    }
    if cfg.report:
        row["report"] = str(add_to_report(cfg.report, row))
    if args.json:
        print_json(row)
        return 0
    lo, hi = result.loss_scrubbed_ci
    print(f"{args.hypothesis}: {hyp.description}")
    for name, value in (
        ("clean", f"{result.loss_clean:.4f}"),
        ("scrubbed", f"{result.loss_scrubbed:.4f}  (95% CI {lo:.4f}–{hi:.4f})"),
        ("baseline (output resampled)", f"{result.loss_baseline:.4f}"),
        ("rock (constant predictor)", f"{result.loss_rock:.4f}"),
        ("recovered", f"{percent(result.recovered)}  (95% CI {percent_interval(*result.recovered_ci)})"),
    ):
        print(f"  {name:<28} {value}")
    print(f"  {result.verdict()}")
    if result.warning():
        print(f"  {result.warning()}")
    if cfg.report:
        print(f"report: {row['report']}")
    return 0
