"""The campaign's material (scripts/campaign.py): the cheap valid run of every command (`BASE`), the
:class:`Case` every table row is, and the tiny model, stores and dictionaries the cases run on (:func:`build_material`).

A case's argv may hold ``{case}``: the case's own scratch folder, made empty before its ``setup`` runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from campaign_damage import cache_with

ROOT = Path(__file__).resolve().parent.parent
HYPOTHESIS = ROOT / "examples" / "scrub" / "parens-correct.yaml"
KINDS = ("name", "number", "path", "output", "corrupt", "kill")
"""Case kinds: unknown names, malformed numbers, bad input paths, bad output locations, damaged files, kill -9."""


@dataclass(frozen=True)
class Case:
    command: str
    """The top-level command the counts are grouped by (``toy``, ``zoo``, …)."""
    kind: str
    """One of :data:`KINDS`."""
    what: str
    """The case in a few words, e.g. ``--steps nan`` or ``sae.safetensors: truncated``."""
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    setup: Callable[[Path], object] | None = None
    """Prepares the scratch folder (copies, damage); may return a short note for the table."""
    needles: tuple[str, ...] = ()
    """The message must contain one of these (the flag, the bad value or the file), else it is unclear."""
    ref: str = ""
    """corrupt: the name of the clean run whose output an exit-0 run must reproduce."""
    watch: str = ""
    """corrupt: the damaged file (``{case}``-relative or absolute); an exit-0 run that left it damaged is undetected."""
    timeout: int = 0
    """Seconds before the case counts as a hang (0: the kind's default)."""


@dataclass
class Material:
    """Paths of what the cases run on, made once by :func:`build_material`."""

    root: Path
    cache: Path
    base_cache: Path
    lm: Path = Path()
    store: Path = Path()
    tc_store: Path = Path()
    train: Path = Path()
    transcoders: Path = Path()
    decompose: Path = Path()
    toy_cache: Path = Path()
    text: Path = Path()

    @property
    def sae(self) -> Path:
        return self.train / "topk"


SITE = "resid_post.1"


def harvest_argv(m: Material, out: str, sites: tuple[str, ...] = (SITE,)) -> list[str]:
    from tests.harness import SMALL_TEXT

    return [
        "harvest",
        "--model",
        str(m.lm),
        "--site",
        *sites,
        "--tokens",
        "600",
        "--val-tokens",
        "100",
        "--batch-contexts",
        "4",
        "--shard-contexts",
        "8",
        "--source",
        SMALL_TEXT,
        "--context-length",
        "32",
        "--val-fraction",
        "0.1",
        "--json",
        "--out",
        out,
    ]


def train_argv(m: Material, out: str, arch: str = "topk", store: str | None = None) -> list[str]:
    extra = {
        "relu": [],
        "topk": ["--k", "4"],
        "batchtopk": ["--k", "4"],
        "matryoshka": ["--k", "4", "--levels", "2"],
        "jumprelu": [],
        "gated": [],
    }[arch]
    return [
        "train",
        "--store",
        store or str(m.store),
        "--site",
        SITE,
        "--out",
        out,
        "--arch",
        arch,
        "--latents",
        "32",
        *extra,
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "10",
        "--warmup-steps",
        "2",
        "--no-progress",
        "--device",
        "cpu",
        "--json",
    ]


def zoo_circuit_argv(name: str = "parens") -> list[str]:
    return [
        "circuit",
        "--model",
        f"zoo:{name}",
        "--method",
        "atp",
        "--examples",
        "16",
        "--budget",
        "2",
        "--top",
        "4",
        "--json",
    ]


# A cheap valid run of every command (and toy action); ``out`` is where it may write.
BASE: dict[str, Callable[[Material, str], list[str]]] = {
    "harvest": lambda m, out: harvest_argv(m, out),
    "train": lambda m, out: train_argv(m, out),
    "evaluate": lambda m, out: [
        "evaluate",
        "--sae",
        str(m.sae),
        "--store",
        str(m.store),
        "--site",
        SITE,
        "--model",
        str(m.lm),
        "--rows",
        "128",
        "--contexts",
        "2",
        "--mean-rows",
        "128",
        "--batch-size",
        "64",
        "--json",
    ],
    "frontier": lambda m, out: [
        "frontier",
        "--sae",
        str(m.sae),
        "--store",
        str(m.store),
        "--site",
        SITE,
        "--out",
        out,
        "--l0s",
        "2",
        "4",
        "--coders",
        "encoder",
        "encoder_nnls",
        "encoder_scaled",
        "mp",
        "omp",
        "gp",
        "--eval-rows",
        "128",
        "--fit-rows",
        "128",
        "--batch-size",
        "64",
        "--model",
        str(m.lm),
        "--loss-contexts",
        "2",
        "--no-progress",
        "--json",
    ],
    "report": lambda m, out: [
        "report",
        "--sae",
        str(m.sae),
        "--store",
        str(m.store),
        "--site",
        SITE,
        "--model",
        str(m.lm),
        "--out",
        f"{out}/report.html",
        "--top-latents",
        "2",
        "--random-latents",
        "1",
        "--max-rows",
        "256",
        "--splice-contexts",
        "1",
        "--mean-rows",
        "128",
        "--distribution-directions",
        "1",
        "--distribution-samples",
        "100",
        "--no-progress",
        "--json",
    ],
    "detect": lambda m, out: [
        "detect",
        "--benchmark",
        "backdoor-lm",
        "--detector",
        "mahalanobis",
        "--bootstrap",
        "10",
        "--json",
    ],
    "toy tms": lambda m, out: [
        "toy",
        "tms",
        "--steps",
        "30",
        "--instances",
        "2",
        "--batch-size",
        "64",
        "--out",
        out,
        "--json",
    ],
    "toy sweep": lambda m, out: [
        "toy",
        "sweep",
        "--n-features",
        "6",
        "--dims",
        "2",
        "--points",
        "2",
        "--steps",
        "20",
        "--instances",
        "1",
        "--batch-size",
        "64",
        "--out",
        out,
        "--json",
    ],
    "toy data-dim": lambda m, out: [
        "toy",
        "data-dim",
        "--models",
        "toy",
        "image",
        "--image-set",
        "digits",
        "--sizes",
        "5",
        "10",
        "--n-features",
        "12",
        "--toy-steps",
        "20",
        "--image-steps",
        "10",
        "--out",
        out,
        "--json",
    ],
    "toy bench": lambda m, out: [
        "toy",
        "bench",
        "--n-features",
        "48",
        "--d",
        "12",
        "--latents",
        "48",
        "--parents",
        "2",
        "--p",
        "0.05",
        "--steps",
        "10",
        "--batch-size",
        "32",
        "--eval-rows",
        "64",
        "--curve-points",
        "0",
        "--archs",
        "topk",
        "--coders",
        "mp",
        "--out",
        out,
        "--json",
    ],
    "llc": lambda m, out: [
        "llc",
        "--known",
        "regular:2",
        "--no-calibrate",
        "--epsilon",
        "1e-3",
        "--gamma",
        "100",
        "--n",
        "500",
        "--chains",
        "2",
        "--draws",
        "20",
        "--burn-in",
        "5",
        "--batch-size",
        "50",
        "--workers",
        "1",
        "--no-progress",
        "--json",
    ],
    "llc calibrate": lambda m, out: [
        "llc",
        "--known",
        "regular:2",
        "--n",
        "500",
        "--chains",
        "2",
        "--draws",
        "20",
        "--burn-in",
        "5",
        "--batch-size",
        "50",
        "--workers",
        "1",
        "--cal-gammas",
        "10",
        "--cal-eps-grid",
        "1",
        "0.3",
        "--cal-pilot-chains",
        "2",
        "--cal-pilot-min-steps",
        "20",
        "--cal-pilot-max-steps",
        "40",
        "--no-progress",
        "--json",
    ],
    "llc model": lambda m, out: [
        "llc",
        "--model",
        "mlp",
        "--checkpoints",
        "--checkpoint-stride",
        "2",
        "--no-calibrate",
        "--epsilon",
        "3e-4",
        "--gamma",
        "100",
        "--chains",
        "2",
        "--draws",
        "10",
        "--burn-in",
        "2",
        "--batch-size",
        "64",
        "--workers",
        "1",
        "--out",
        out,
        "--no-progress",
        "--json",
    ],
    "zoo list": lambda m, out: ["zoo", "list", "--json"],
    "zoo train": lambda m, out: ["zoo", "train", "parens", "--json"],
    "scrub": lambda m, out: [
        "scrub",
        str(HYPOTHESIS),
        "--model",
        "zoo:parens",
        "--examples",
        "64",
        "--seeds",
        "2",
        "--json",
    ],
    "circuit": lambda m, out: zoo_circuit_argv("induction"),
    "graph": lambda m, out: [
        "graph",
        "--model",
        str(m.lm),
        "--prompt",
        "The cat sat on",
        "--transcoders",
        str(m.transcoders),
        "--store",
        str(m.tc_store),
        "--dashboard-rows",
        "256",
        "--out",
        out,
        "--batch-size",
        "8",
        "--max-logits",
        "2",
        "--json",
    ],
    "convert": lambda m, out: ["convert", str(m.sae), out, "--to", "saelens", "--json"],
    "explain": lambda m, out: [
        "explain",
        "--sae",
        str(m.sae),
        "--store",
        str(m.store),
        "--model",
        str(m.lm),
        "--explainer-model",
        str(m.lm),
        "--count",
        "2",
        "--batch-latents",
        "2",
        "--no-score",
        "--max-new-tokens",
        "4",
        "--out",
        out,
        "--no-progress",
        "--json",
    ],
    "probe": lambda m, out: [
        "probe",
        "--sae",
        str(m.sae),
        "--model",
        str(m.lm),
        "--site",
        SITE,
        "--concepts",
        "keyword",
        "--contexts",
        "16",
        "--context-length",
        "32",
        "--rows",
        "200",
        "--min-rows",
        "3",
        "--ks",
        "1",
        "2",
        "--no-absorption",
        "--out",
        out,
        "--json",
    ],
    "decompose": lambda m, out: [
        "decompose",
        "--model",
        "toy:tms",
        "--toy-steps",
        "30",
        "--steps",
        "6",
        "--warmup-steps",
        "3",
        "--batch-size",
        "32",
        "--n-eval",
        "128",
        "--checkpoint-every",
        "3",
        "--out",
        out,
        "--json",
    ],
    "demo": lambda m, out: [
        "demo",
        "--out",
        out,
        "--tokens",
        "600",
        "--val-tokens",
        "200",
        "--latents",
        "32",
        "--k",
        "4",
        "--steps",
        "3",
        "--batch-size",
        "32",
        "--frontier-l0s",
        "4",
        "--frontier-rows",
        "64",
        "--loss-contexts",
        "1",
        "--report-contexts",
        "1",
        "--toy-steps",
        "10",
        "--json",
    ],
}


def top(key: str) -> str:
    return key.split()[0]


# ---- the material -------------------------------------------------------------------------------------------


def build_material(root: Path, base_cache: Path, run_many) -> Material:
    """Make the tiny model, stores, SAE, transcoders and caches (minutes); ``run_many(cases)`` runs CLI calls."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kill_table import tiny_llama

    m = Material(root=root, cache=root / "cache", base_cache=base_cache)
    cache_with(base_cache, m.cache)
    os.environ["MECHSCOPE_CACHE"] = str(m.cache)
    m.lm = tiny_llama(root / "lm")
    m.text = root / "files" / "text.txt"
    m.text.parent.mkdir()
    import glob

    from tests.harness import SMALL_TEXT

    m.text.write_text("\n\n".join(Path(p).read_text() for p in sorted(glob.glob(SMALL_TEXT))[:3]))
    m.store, m.tc_store = root / "store", root / "tc-store"
    m.train, m.transcoders, m.decompose = root / "train", root / "transcoders", root / "decompose"
    m.toy_cache = root / "toy-cache"
    tc_sites = tuple(f"mlp_in.{l}" for l in range(3)) + tuple(f"mlp_out.{l}" for l in range(3))
    first = [
        (harvest_argv(m, str(m.store)), {}),
        (harvest_argv(m, str(m.tc_store), tc_sites), {}),
        (BASE["toy tms"](m, str(root / "toy-out")), {"MECHSCOPE_CACHE": str(m.toy_cache)}),
        (BASE["detect"](m, ""), {}),
        (BASE["decompose"](m, str(m.decompose)), {}),
    ]
    second = [(train_argv(m, str(m.train)), {})]
    for l in range(3):
        second.append(
            (
                [
                    "train",
                    "--store",
                    str(m.tc_store),
                    "--site",
                    f"mlp_in.{l}",
                    "--target-site",
                    f"mlp_out.{l}",
                    "--arch",
                    "transcoder",
                    "--latents",
                    "32",
                    "--k",
                    "4",
                    "--steps",
                    "30",
                    "--batch-size",
                    "32",
                    "--warmup-steps",
                    "2",
                    "--no-progress",
                    "--device",
                    "cpu",
                    "--out",
                    str(m.transcoders / f"L{l}"),
                ],
                {},
            )
        )
    for batch in (first, second):
        for (argv, _), proc in zip(batch, run_many(batch)):
            if proc.returncode != 0:
                raise RuntimeError(f"material: `mechscope {' '.join(argv)}` failed:\n{proc.stderr[-3000:]}")
    return m
