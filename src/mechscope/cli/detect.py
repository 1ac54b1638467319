"""``mechscope detect --benchmark NAME --detector NAME [--json]`` and ``mechscope detect --all``.

Fits the detector on the benchmark's trusted inputs, scores clean and anomalous test inputs, and prints
AUROC and AP with bootstrap intervals, aggregated and per site. ``--all`` runs every detector on every
benchmark (or on the ``--benchmark`` / ``--detector`` given) and prints the table. ``--report FILE`` writes the
HTML report: the table, score histograms and ROC curves. (``--task`` was the old name of ``--benchmark``; it is
refused with the new name.) A detector on your own model and inputs: :func:`mechscope.fit_detector` in Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from mechscope.config import add_arguments, finite_float, from_namespace
from mechscope.errors import UsageError, flag_names
from mechscope.jsonout import print_json
from mechscope.models.resolve import RunOn, resolve_model
from mechscope.preflight import check_outputs


@dataclass(frozen=True)
class DetectConfig:
    """What ``mechscope detect`` runs."""

    benchmark: str = ""
    """Benchmark (backdoor-corner, backdoor-blend, backdoor-lm, ood); with --all, empty means every benchmark."""
    detector: str = ""
    """Detector (mahalanobis, que, spectral, lof, knn, sae, distill, probe); with --all, empty means every detector."""
    all: bool = False
    """Run every detector × benchmark pair (restricted by --benchmark / --detector when given) and print the table."""
    sites: tuple[str, ...] = ()
    """Sites to read (module paths of the benchmark's model); empty = the benchmark's default sites."""
    set: tuple[str, ...] = ()
    """Detector settings as KEY=VALUE (e.g. shrinkage=none, k=5, aggregate=max); with several detectors, each must have the key."""
    trusted: int = 0
    """Fit on only the first N trusted inputs of the benchmark (0 = all of them)."""
    bootstrap: int = 500
    """Bootstrap resamples for the 95 percent intervals (0 = none)."""
    seed: int = 0
    """Seed of the bootstrap."""
    report: str = ""
    """Write an HTML report (table, histograms, ROC curves) to this file."""
    plots: str = ""
    """Also save per benchmark the ROC curves and score histograms as PNGs in this folder (anomaly-roc-BENCHMARK.png, anomaly-hist-BENCHMARK.png)."""
    json: bool = False
    """Print one JSON object on stdout instead of text."""

    def __post_init__(self) -> None:
        from mechscope.anomaly import REGISTRY
        from mechscope.anomaly.benchmarks import BENCHMARKS

        if not self.all and not (self.benchmark and self.detector):
            raise UsageError("give --benchmark and --detector (or --all for the whole table)")
        if self.benchmark and self.benchmark not in BENCHMARKS:
            raise UsageError(f"unknown benchmark {self.benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
        if self.detector and self.detector not in REGISTRY:
            raise UsageError(f"unknown detector {self.detector!r}; choose one of: {', '.join(REGISTRY)}")
        if self.trusted < 0:
            raise UsageError(f"--trusted must be non-negative, got {self.trusted}")
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be non-negative, got {self.bootstrap}")


def parse_settings(detector: str, pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE strings → typed settings of ``detector``'s config (unknown keys refused)."""
    from mechscope.anomaly import REGISTRY

    fields = {f.name: f for f in dataclasses.fields(REGISTRY[detector].config_cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields:
            raise UsageError(
                f"bad --set {pair!r} for detector {detector!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}"
            )
        default = fields[key].default
        if default is dataclasses.MISSING:
            raise UsageError(
                f"--set {pair!r}: {key} of detector {detector!r} has no default to take its type from; "
                "it cannot be set with --set"
            )
        parse = finite_float if isinstance(default, float) else type(default)
        try:
            out[key] = value if isinstance(default, str) else parse(value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise UsageError(
                f"--set {pair!r}: {value!r} is not a valid {'finite ' * (parse is finite_float)}"
                f"{type(default).__name__}"
            ) from e
    return out


RENAMED = {"--task": "--benchmark"}
"""Old flag → its new name: given, it ends in one line naming the new one (the anomaly sets are benchmarks, not a
:class:`mechscope.task.Task`)."""


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, DetectConfig)
    add_arguments(parser, RunOn)
    for old in RENAMED:  # hidden: accepted only to be refused with the new name
        parser.add_argument(old, dest=f"renamed{old.replace('-', '_')}", default=None, help=argparse.SUPPRESS)


def _line(s: dict[str, Any]) -> str:
    lo, hi = s["auroc_ci"]
    flag = " [ceiling]" if s["supervised_ceiling"] else (" [sees batch]" if s["sees_untrusted_batch"] else "")
    return (
        f"{s['benchmark']:<16} {s['detector']:<12} AUROC {s['auroc']:.3f} [{lo:.3f}, {hi:.3f}]  AP {s['ap']:.3f}  "
        f"best site {s['best_site']} {s['best_site_auroc']:.3f}{flag}"
    )


def run_detect(args: argparse.Namespace) -> int:
    from mechscope.anomaly import REGISTRY
    from mechscope.anomaly.benchmarks import BENCHMARKS, load_benchmark
    from mechscope.anomaly.evaluate import evaluate

    for old, new in RENAMED.items():
        if getattr(args, f"renamed{old.replace('-', '_')}", None) is not None:
            raise UsageError(f"{old} was renamed to {new}; give {new} NAME")
    cfg = from_namespace(DetectConfig, args)
    on = from_namespace(RunOn, args)
    check_outputs(args, folders=["plots"], files=["report"])
    benchmarks = [cfg.benchmark] if cfg.benchmark else list(BENCHMARKS)
    detectors = [cfg.detector] if cfg.detector else list(REGISTRY)
    settings = {
        d: parse_settings(d, cfg.set) for d in detectors
    }  # with several detectors, every one must know each key
    # A detector's error names its setting (`shrinkage`); here that is set with --set.
    set_flags = {f.name: f"--set {f.name}" for d in detectors for f in dataclasses.fields(REGISTRY[d].config_cls)}
    results = []
    bar = tqdm(total=len(benchmarks) * len(detectors), unit="pair", disable=len(benchmarks) * len(detectors) == 1)
    for name in benchmarks:
        bench = load_benchmark(name)
        resolve_model(bench.model, device=on.device, dtype=on.dtype)  # the benchmark's model, moved where it runs
        if cfg.trusted > len(bench.trusted):
            raise UsageError(
                f"--trusted {cfg.trusted}: benchmark {name} has {len(bench.trusted)} trusted inputs; "
                f"give --trusted between 1 and {len(bench.trusted)} (0 = all of them)"
            )
        for det in detectors:
            bar.set_description(f"{name} {det}")
            with flag_names(set_flags):
                results.append(
                    evaluate(
                        bench,
                        det,
                        list(cfg.sites) or None,
                        cfg.bootstrap,
                        cfg.seed,
                        n_trusted=cfg.trusted or None,
                        **settings[det],
                    )
                )
            bar.update(1)
    bar.close()
    if cfg.report:
        from mechscope.anomaly.report import write_detect_report

        write_detect_report(cfg.report, results)
    if cfg.plots:
        from mechscope.anomaly.report import save_plots

        save_plots(cfg.plots, results)
    if cfg.json:
        out = results[0].summary if len(results) == 1 and not cfg.all else {"table": [r.summary for r in results]}
        print_json(out)
    else:
        for r in results:
            print(_line(r.summary))
        if cfg.report:
            print(f"report: {cfg.report}")
    sys.stdout.flush()
    return 0
