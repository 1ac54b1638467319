"""The ``mechscope`` command: one subcommand per stage, flags generated from the stage's configs.

Subcommands live in :data:`COMMANDS` (name → the module and its two functions: one adds the flags
to a parser, one runs), so adding a stage is one line and nothing here branches on names.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mechscope.errors import MechscopeError, flag_names

# name → ("module:add_arguments_function:run_function", one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "harvest": (
        "mechscope.cli.harvest:add_arguments:run",
        "read activations at sites of a model into an on-disk store",
    ),
    "train": (
        "mechscope.cli.train:add_train_arguments:run_train",
        "train sparse autoencoders on a store (or online from a model)",
    ),
    "evaluate": (
        "mechscope.cli.evaluate:add_arguments:run",
        "reconstruction metrics and loss recovered beside the baselines",
    ),
    "frontier": (
        "mechscope.cli.frontier:add_frontier_arguments:run_frontier",
        "sweep L0 for the SAE encoder and the pursuit coders on one dictionary",
    ),
    "report": (
        "mechscope.cli.report:add_report_arguments:run_report",
        "write a self-contained HTML report with latent dashboards",
    ),
    "detect": (
        "mechscope.cli.detect:add_detect_arguments:run_detect",
        "fit anomaly detectors on trusted inputs; AUROC on tasks with planted anomalies",
    ),
    "toy": (
        "mechscope.cli.toy:add_arguments:run",
        "toy models of superposition with known truth: tms, sweep, data-dim, bench",
    ),
    "llc": (
        "mechscope.cli.llc:add_arguments_llc:run",
        "the local learning coefficient λ̂ (SGLD), on a model or a known-answer model",
    ),
    "zoo": (
        "mechscope.cli.zoo:add_arguments:run",
        "list the zoo's small trained models or train one (parens, modadd, induction)",
    ),
    "scrub": (
        "mechscope.cli.scrub:add_arguments:run",
        "causal scrubbing: test a hypothesis (YAML) about a model by resampling ablations",
    ),
    "circuit": (
        "mechscope.cli.circuit:add_arguments:run",
        "find a circuit (AtP, AtP*, EAP, EAP-IG, ACDC, exact) checked against exact patching",
    ),
    "graph": (
        "mechscope.cli.graph:add_arguments:run",
        "attribution graph of one prompt over transcoders replacing every MLP, pruned, with its fidelity",
    ),
    "explain": (
        "mechscope.cli.explain:add_arguments:run",
        "explain latents of a dictionary in one sentence each, scored beside random and constant explanations",
    ),
    "probe": (
        "mechscope.cli.probe:add_arguments:run",
        "sparse probing of concepts built offline, and first-letter absorption, on dictionaries' latents",
    ),
    "decompose": (
        "mechscope.cli.decompose:add_arguments:run",
        "parameter decomposition (SPD) into rank-one mechanisms, checked on known answers",
    ),
    "convert": (
        "mechscope.cli.convert:add_arguments:run",
        "rewrite a dictionary in another format (mechscope, saelens, sparsify, circuittracer)",
    ),
    "demo": (
        "mechscope.cli.demo:add_arguments:run",
        "the whole path on the embedded SmolLM2: harvest, train, evaluate, report",
    ),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (its module is imported only when that command is used)."""
    target, help_text = COMMANDS[name]
    module, add_name, run_name = target.split(":")
    p = argparse.ArgumentParser(
        prog=f"mechscope {name}", description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    mod = importlib.import_module(module)
    getattr(mod, add_name)(p)
    p.set_defaults(_run=getattr(mod, run_name))
    return p


def parser_flags(parser: argparse.ArgumentParser, args: argparse.Namespace | None = None) -> dict[str, str]:
    """Each destination of ``parser`` (and of the subcommand ``args`` chose, or of every subcommand without
    ``args``) → its long flag: ``{"target_site": "--target-site"}``.

    Library errors name Python parameters (`target_site`); while a command runs, one its flags set is shown as
    the flag. Where a flag sets a parameter of another name, the code adding the flag registers the pair with
    ``parser.set_defaults(_parameter_flags={"scaling_factor": "--sae-scaling-factor"})`` (or the command wraps
    the call in its own :func:`flag_names`)."""
    flags: dict[str, str] = dict(parser.get_default("_parameter_flags") or {})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None) if args is not None else None
            for name, sub in action.choices.items():
                if chosen is None or name == chosen:
                    flags.update(parser_flags(sub, args))
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest != argparse.SUPPRESS:
            flags[action.dest] = longs[0]
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A :class:`~mechscope.errors.MechscopeError` ends in one line on stderr,
    ``mechscope: error: …``, with its exit code (2 usage, 1 failure), and so does an ``OSError`` that names a
    file (permission denied, a folder where a file was expected, a full disk: the environment's, not ours);
    ``--debug`` anywhere on the command line shows the traceback instead. Other exceptions are our bugs and
    keep theirs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    top = argparse.ArgumentParser(
        prog="mechscope",
        description="mechscope: mechanistic interpretability with measurements that can fail.",
        epilog="commands:\n"
        + "\n".join(f"  {n:<10} {h}" for n, (_, h) in COMMANDS.items())
        + "\n\n--debug (anywhere) shows the traceback of an error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    top.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    first = top.parse_args(argv[:1] or ["--help"])
    parser = command_parser(first.command)
    args = parser.parse_args(argv[1:])
    try:
        with flag_names(parser_flags(parser, args)):
            return int(args._run(args) or 0)
    except MechscopeError as e:
        if debug:
            raise
        print(f"mechscope: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # A file the user named (or its folder) that cannot be read or written: permission, a folder where a
        # file was expected, a full disk. The operating system names the file; that is the user's to fix.
        if debug or e.filename is None:
            raise
        print(
            f"mechscope: error: cannot use {e.filename}: {e.strerror or e}; check the path and its permissions",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("mechscope: interrupted", file=sys.stderr)
        return 130
