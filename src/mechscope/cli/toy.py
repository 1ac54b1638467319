"""``mechscope toy {tms,sweep,data-dim,bench}``: toy models of superposition with known truth.

Each action writes its JSON, PNG plots and a one-section HTML report to ``--out`` and prints a short
summary, or one JSON object with ``--json``. Actions are a registry (:data:`ACTIONS`: name → (config
class, run function, help)); the flags of each come from its frozen config.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mechscope.atomic import atomic_write_bytes, atomic_write_json
from mechscope.config import add_arguments as add_config_arguments, from_namespace, to_dict
from mechscope.errors import UsageError, flag_names
from mechscope.jsonout import plain, print_json
from mechscope.preflight import writable_folder
from mechscope.report.html import Section, write_report
from mechscope.toy import plots
from mechscope.toy.bench import BenchConfig, dict_size_sweep, run_bench
from mechscope.toy.datadim import DataDimConfig, image_curve, toy_curve
from mechscope.toy.features import FeatureConfig, check_importance_decay
from mechscope.toy.models import ToyModelConfig, check_superposition
from mechscope.toy.sweep import PLATEAUS, SweepConfig, plateau_hits, sparsity_sweep
from mechscope.toy.tms import tms_section


@dataclass(frozen=True)
class TMSConfig:
    """One toy model of superposition (defaults: the pentagon regime of n = 5, m = 2)."""

    features: int = 5
    """Features n."""
    dims: int = 2
    """Hidden dimensions m (fewer than features, or nothing is in superposition)."""
    p: float = 0.01
    """Probability that a feature is active (1 − S). 0.01 is deep in the pentagon regime at n=5, m=2 (measured
    with 3000 steps, 8 instances: D_i 0.3995–0.4006 at p=0.01 against 0.3988–0.4009 at p=0.05)."""
    importance_decay: float = 1.0
    """Importance of feature i is importance_decay^i."""
    kind: Literal["tms", "linear"] = "tms"
    """tms: x' = ReLU(WᵀWx + b); linear: the linear low-rank autoencoder."""
    instances: int = 8
    """Initialisations trained side by side; the lowest-loss one is reported."""
    steps: int = 3000
    """Adam steps."""
    batch_size: int = 1024
    """Rows per step."""
    seed: int = 0
    """Seed of the features and the initialisation."""

    def __post_init__(self) -> None:
        check_superposition(self.features, self.dims)
        if not 0 < self.p <= 1:
            raise UsageError(f"--p {self.p} is outside (0, 1]; it is the probability that a feature is active")
        if not 0 < self.importance_decay < math.inf:
            raise UsageError(f"--importance-decay {self.importance_decay} must be finite and > 0")
        check_importance_decay(self.importance_decay, self.features, "--importance-decay")
        self.build()  # the feature and model configs check the rest (--instances, --steps, --batch-size ≥ 1)

    def build(self) -> tuple[FeatureConfig, ToyModelConfig]:
        return (
            FeatureConfig(n_features=self.features, p=self.p, importance_decay=self.importance_decay, seed=self.seed),
            ToyModelConfig(
                kind=self.kind,
                dims=self.dims,
                instances=self.instances,
                steps=self.steps,
                batch_size=self.batch_size,
                seed=self.seed,
            ),
        )


@dataclass(frozen=True)
class BenchActionConfig(BenchConfig):
    """The benchmark, plus an optional dictionary-size sweep on the same data."""

    dict_sizes: tuple[int, ...] = ()
    """Also train TopK SAEs of these sizes (≥ 2 of them) and plot recovery against size; empty = skip."""


def _tms(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], list[Section]]:
    res, section = tms_section(*from_namespace(TMSConfig, args).build(), out)
    return res, [section]


def _sweep(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], list[Section]]:
    cfg = from_namespace(SweepConfig, args)
    points = sparsity_sweep(cfg)
    png = plots.save(plots.sparsity_sweep(points, PLATEAUS), out / "sparsity-sweep.png")
    text = "p → dims/feature: " + "; ".join(f"{p['p']:.3g} → {p['dims_per_feature']:.3f}" for p in points)
    hits = plateau_hits([p["dims_per_feature"] for p in points])
    text += ". Points within ±0.02 of each fraction: " + ", ".join(f"{f:.3g}: {k}" for f, k in hits.items())
    return {"points": points, "plateau_hits": [{"fraction": f, "points": k} for f, k in hits.items()]}, [
        Section("Sparsity sweep", text=text, figures=(("dimensions per feature against sparsity", png),))
    ]


def _data_dim(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], list[Section]]:
    cfg = from_namespace(DataDimConfig, args)
    models = tuple(getattr(args, "models", ("toy", "image")))
    curves = {name: CURVES[name](cfg) for name in models}
    titles = {"toy": f"toy model (n={cfg.n_features}, m={cfg.dims})", "image": f"{cfg.image_set} MLP (m={cfg.dims})"}
    png = plots.save(plots.data_dim_curves({titles[k]: v for k, v in curves.items()}), out / "data-dim.png")
    text = " | ".join(
        f"{titles[k]}: " + "; ".join(f"T={p['T']} train {p['train_mean']:.3g} val {p['val_mean']:.3g}" for p in v)
        for k, v in curves.items()
    )
    return {"curves": curves}, [
        Section("Data dimensionality over T (train and held-out)", text=text, figures=(("mean D_t against T", png),))
    ]


def _bench(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], list[Section]]:
    cfg = from_namespace(BenchActionConfig, args)
    bench_cfg = BenchConfig(
        **{k: v for k, v in to_dict(cfg).items() if k != "dict_sizes" and k in BenchConfig.__dataclass_fields__}
    )
    if cfg.dict_sizes and len(cfg.dict_sizes) < 2:
        raise UsageError(f"--dict-sizes needs at least two sizes, got {list(cfg.dict_sizes)}")
    res = run_bench(bench_cfg)
    png = plots.save(plots.bench_bars(res["rows"], res["k"]), out / "bench.png")
    atomic_write_bytes(out / "bench.md", (bench_table(res["rows"]) + "\n").encode())
    figures = [("F1, MMCS and FVU per method", png)]
    if res["curve"]:
        figures.append(("MMCS against rows seen", plots.save(plots.convergence(res["curve"]), out / "convergence.png")))
    if cfg.dict_sizes:
        with flag_names({"sizes": "--dict-sizes"}):
            res["dict_sizes"] = dict_size_sweep(bench_cfg, tuple(cfg.dict_sizes))
        figures.append(
            ("recovery against dictionary size", plots.save(plots.dict_size(res["dict_sizes"]), out / "dict-size.png"))
        )
    text = f"{cfg.n_features} true features in {cfg.d} dims, every method at L0 ≤ {res['k']} (expected active features {res['expected_l0']:.2f})."
    if res["curve"]:
        last = res["curve"][-1]
        text += (
            f" MMCS after {last['rows']:,} rows: " + ", ".join(f"{k} {v:.3f}" for k, v in last["mmcs"].items()) + "."
        )
    return res, [Section("Ground-truth benchmark", text=text, html=_table_html(res["rows"]), figures=tuple(figures))]


COLUMNS = ("method", "kind", "dictionary", "native_l0", "l0", "fvu", "mmcs", "matched_0.9", "precision", "recall", "f1")


def bench_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark rows as a Markdown table."""

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _table_html(rows: list[dict[str, Any]]) -> str:
    from mechscope.report.markup import table

    return table(
        COLUMNS, ([f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in COLUMNS] for r in rows)
    )


CURVES: dict[str, Callable[[DataDimConfig], list[dict[str, Any]]]] = {"toy": toy_curve, "image": image_curve}

# action → (config classes whose fields become flags, run function, help)
ACTIONS: dict[str, tuple[tuple[type, ...], Callable, str]] = {
    "tms": ((TMSConfig,), _tms, "train one toy model of superposition; dims per feature and each D_i; the W plot"),
    "sweep": ((SweepConfig,), _sweep, "sparsity sweep: dimensions per feature falling through the plateaus"),
    "data-dim": (
        (DataDimConfig,),
        _data_dim,
        "data dimensionality over training-set size, train and held-out, toy + image MLP",
    ),
    "bench": ((BenchActionConfig,), _bench, "score every SAE architecture and coder against the true features"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", help=", ".join(ACTIONS))
    for name, (configs, _, help_text) in ACTIONS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        p.add_argument("--out", default=f"out/toy/{name}", help="folder for the JSON, plots and report")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        if name == "data-dim":
            p.add_argument(
                "--models", nargs="+", choices=list(CURVES), default=list(CURVES), help="which curves to compute"
            )
        for cls in configs:
            add_config_arguments(p, cls)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # toy models are tiny: a second thread only adds contention
    t0 = time.time()
    out = writable_folder(args.out)  # created by the first write
    result, sections = ACTIONS[args.action][1](args, out)
    result = {"action": args.action, **result, "seconds": time.time() - t0}
    atomic_write_json(out / f"{args.action}.json", plain(result))
    report = write_report(out / "report.html", title=f"mechscope toy {args.action}", sections=sections)
    if args.json:
        print_json(result)
    else:
        for s in sections:
            print(f"{s.title}: {s.text}")
        print(f"wrote {out / (args.action + '.json')}, the plots and {report} in {time.time() - t0:.0f}s")
    return 0
