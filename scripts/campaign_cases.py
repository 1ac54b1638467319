"""The campaign's table (scripts/campaign.py): the material every case uses, a cheap valid run of every
command, and the cases built on them, one :class:`Case` per bad input, damaged file or kill.

A case's argv may hold ``{case}``: the case's own scratch folder, made empty before its ``setup`` runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from campaign_damage import JSON_DAMAGE, SAFETENSORS_DAMAGE, cache_with, copy_tree, damage, read_only, unreadable

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


# ---- malformed numbers: every int/float flag of every command, from its parser --------------------------------


@functools.lru_cache(maxsize=1)
def parsers() -> dict[str, argparse.ArgumentParser]:
    """Parser of every command and toy/zoo action, by BASE key."""
    from mechscope.cli import COMMANDS, command_parser

    out = {}
    for name in COMMANDS:
        p = command_parser(name)
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            out.update({f"{name} {act}": sp for act, sp in subs[0].choices.items()})
        else:
            out[name] = p
    return out


HUGE_INT = "1" + "0" * 30
VALUES = {
    "nan": "nan",
    "inf": "inf",
    "-inf": "-inf",
    "0": "0",
    "negative": "-5",
    "huge": HUGE_INT,
    "non-numeric": "abc",
}
# Values that are not bad for a flag: zero where the flag's help gives 0 a meaning (regex below) or where
# zero switches an optional term off; negatives of a seed or a position; huge where the help says the
# value is capped. Every other (flag, value) pair is a bad input.
ZERO_OK = {
    "--seed",
    "--beta1",
    "--decay-start",
    "--warmup-steps",
    "--l1-coef",
    "--sparsity-coef",
    "--threshold-init",
    "--tanh-scale",
    "--faithfulness-coeff",
    "--recon-coeff",
    "--importance-coeff",
    "--leak",
    "--upper-leak",
    "--alive-threshold",
    "--threshold",
    "--scale-sigma",
    "--coding-scale-ridge",
    "--cal-accept-min",
    "--latents@report",
    "--random-latents",
    "--context-before",
    "--context-after",
    "--logit-tokens",
    "--contexts-per-latent",
    "--top-contexts",
    "--val-tokens",
    "--logit-position",
    "--splice-contexts",
    "--loss-contexts",
    "--burn-in",
    "--coding-tol",
    "--coding-gram-max-latents",
    "--distribution-directions",
    "--top-latents",
    "--parents",
    "--children-per-parent",
}
NEGATIVE_OK = {"--seed", "--logit-position"}
HUGE_OK = {
    "--tokens@harvest",
    "--max-tokens",
    "--val-tokens@harvest",
    "--rows",
    "--mean-rows",
    "--max-rows",
    "--eval-rows",
    "--fit-rows",
    "--dashboard-rows",
    "--draw-nodes",
    "--draw-edges",
    "--max-logits",
    "--cal-pilot-max-steps",
    "--cal-max-healthy",
    "--coding-gram-max-latents",
    "--coding-nnls-max-iter",
    "--distribution-samples",
    "--log-every",
    "--checkpoint-every",
    "--eval-every",
    "--mala-every",
    "--checkpoint-stride",
    "--top-contexts",
    "--context-before",
    "--context-after",
    "--logit-tokens",
    "--random-latents",
    "--top-latents",
    "--splice-contexts",
    "--contexts@evaluate",
    "--batch-size@evaluate",
    "--batch-size@report",
    "--splice-batch-size",
    "--trusted",
    "--top",
    "--budget",
    "--latents-per-site",
    "--l0s",
    "--workers",
    "--seed@detect",
}


# Flags that only act in another mode of their command: what to add to the cheap run so that they do.
FLAG_BASE = {
    ("circuit", "--threshold"): ["--method", "acdc"],
    ("circuit", "--ig-steps"): ["--method", "eap-ig"],
    ("decompose", "--d-embed"): [
        "--model",
        "toy:resid-mlp",
        "--features",
        "10",
        "--dims",
        "5",
        "--toy-steps",
        "20",
        "--C",
        "10",
    ],
}


def _zero_documented(help_text: str) -> bool:
    import re

    # "(0: all)", "(0 = none)", "0 turns it off"; not an interval such as "in (0, 10]", which excludes 0
    return bool(re.search(r"\(0\b(?!\s*,)|\b0 ?(=|:|means|turns|writes|for)", help_text or ""))


def legit(key: str, flag: str, kind: str, help_text: str) -> bool:
    names = {flag, f"{flag}@{top(key)}"}
    if kind == "0":
        return bool(names & ZERO_OK) or _zero_documented(help_text)
    if kind == "negative":
        return bool(names & NEGATIVE_OK)
    if kind == "huge":
        return bool(names & HUGE_OK) or ("capped" in (help_text or ""))
    return False


def value_needles(value: str) -> tuple[str, ...]:
    """How a message may quote a bad number (as given, or as Python prints it); not 0, which every message holds."""
    if value == "0":
        return ()
    try:
        again = repr(float(value)) if "." in value or "e" in value else value
    except ValueError:
        again = value
    return tuple({value, again})


def _train_arch(flag: str) -> str:
    """An architecture that has the field of ``flag`` (train refuses a flag of another architecture)."""
    from mechscope.sae import REGISTRY

    name = flag[2:].replace("-", "_")
    for arch in ("topk", "relu", "batchtopk", "matryoshka", "jumprelu"):
        cls = REGISTRY[arch].config_cls
        if name in cls.__dataclass_fields__:
            return arch
    return "topk"


def number_type(action) -> type | None:
    """int or float for a numeric flag (mechscope's checked types ``bounded_int`` / ``finite_float`` included, and
    those wrapped in a range-checking ``NumberType``)."""
    from mechscope.config import NumberType, bounded_int, finite_float

    parse = action.type.parse if isinstance(action.type, NumberType) else action.type
    return {int: int, bounded_int: int, float: float, finite_float: float}.get(parse)


def number_cases(m: Material) -> list[Case]:
    cases = []
    for key, parser in parsers().items():
        base_key = {"llc": None}.get(key, key)
        for action in parser._actions:
            kind_of = number_type(action)
            if not action.option_strings or kind_of is None:
                continue
            flag = action.option_strings[-1]
            bk = base_key
            if key == "llc":
                bk = (
                    "llc calibrate"
                    if flag.startswith("--cal-")
                    else "llc model"
                    if flag == "--checkpoint-stride"
                    else "llc"
                )
            for kind, value in VALUES.items():
                if kind_of is float and kind == "huge":
                    value = "1e300"
                if kind_of is float and kind == "negative":
                    value = "-0.5"
                if legit(key, flag, kind, action.help or ""):
                    continue
                base = train_argv(m, "{case}/out", _train_arch(flag)) if key == "train" else BASE[bk](m, "{case}/out")
                base += FLAG_BASE.get((key, flag), [])
                # --flag=VALUE, so that argparse does not read -inf as a flag; a list gets the bad value first
                # and a valid one after it (some need two values)
                given = [f"{flag}={value}"]
                if action.nargs == "+":
                    tail = {"--widths": "32", "--dict-sizes": "16"}.get(flag) or (
                        str(action.default[0])
                        if isinstance(action.default, tuple) and len(action.default) >= 2
                        else None
                    )
                    given = [flag, value] + ([tail] if tail else [])
                dest = action.dest
                needles = (
                    flag,
                    flag[2:],
                    dest,
                    dest.removeprefix("cal_").removeprefix("coding_"),
                    dest.replace("_", " "),
                    *value_needles(value),
                )
                cases.append(Case(top(key), "number", f"{key}: {flag} {value}", (*base, *given), needles=needles))
    return cases


# ---- unknown names -----------------------------------------------------------------------------------------


def name_cases(m: Material) -> list[Case]:
    B = {k: f(m, "{case}/out") for k, f in BASE.items()}
    nope = "nope-campaign"

    def with_flag(key, flag, value, argv=None):
        argv = list(argv or B[key])
        if flag in argv:
            i = argv.index(flag)
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            argv[i:j] = [flag, value]
        else:
            argv += [flag, value]
        return argv

    rows: list[tuple[str, str, list[str], tuple[str, ...]]] = [
        ("harvest", f"--site {nope}", with_flag("harvest", "--site", nope), (nope,)),
        (
            "harvest",
            "--site resid_post.99 (no such layer)",
            with_flag("harvest", "--site", "resid_post.99"),
            ("resid_post.99",),
        ),
        ("harvest", "--dtype float64 (not a choice)", with_flag("harvest", "--dtype", "float64"), ("float64",)),
        ("train", f"--site {nope}", with_flag("train", "--site", nope), (nope,)),
        ("train", f"--arch {nope}", with_flag("train", "--arch", nope), (nope,)),
        ("train", f"--sweep {nope}=1,2", B["train"] + ["--sweep", f"{nope}=1,2"], (nope,)),
        ("train", f"--device {nope}", with_flag("train", "--device", nope), (nope,)),
        ("train", "--device cuda:64", with_flag("train", "--device", "cuda:64"), ("cuda:64", "--device")),
        (
            "train",
            f"--target-site {nope} (transcoder)",
            with_flag("train", "--arch", "transcoder", with_flag("train", "--target-site", nope)),
            (nope,),
        ),
        ("evaluate", f"--site {nope}", with_flag("evaluate", "--site", nope), (nope,)),
        ("evaluate", f"--model {nope}", with_flag("evaluate", "--model", nope), (nope,)),
        ("frontier", f"--site {nope}", with_flag("frontier", "--site", nope), (nope,)),
        ("frontier", f"--coders {nope}", with_flag("frontier", "--coders", nope), (nope,)),
        ("frontier", f"--device {nope}", B["frontier"] + ["--device", nope], (nope,)),
        ("frontier", f"--model {nope}", B["frontier"] + ["--model", nope], (nope,)),
        ("report", f"--site {nope}", with_flag("report", "--site", nope), (nope,)),
        ("report", f"--model {nope}", with_flag("report", "--model", nope), (nope,)),
        ("detect", f"--benchmark {nope}", with_flag("detect", "--benchmark", nope), (nope,)),
        ("detect", f"--detector {nope}", with_flag("detect", "--detector", nope), (nope,)),
        ("detect", f"--sites {nope}", B["detect"] + ["--sites", nope], (nope,)),
        ("detect", f"--set {nope}=1", B["detect"] + ["--set", f"{nope}=1"], (nope,)),
        ("toy", f"toy {nope} (no such action)", ["toy", nope], (nope,)),
        ("toy", "tms --kind nope", with_flag("toy tms", "--kind", nope), (nope,)),
        (
            "toy",
            f"data-dim --image-set {nope}",
            with_flag("toy data-dim", "--models", "image", with_flag("toy data-dim", "--image-set", nope)),
            (nope,),
        ),
        ("toy", f"data-dim --models {nope}", with_flag("toy data-dim", "--models", nope), (nope,)),
        ("toy", f"bench --archs {nope}", with_flag("toy bench", "--archs", nope), (nope,)),
        ("toy", f"bench --coders {nope}", with_flag("toy bench", "--coders", nope), (nope,)),
        ("toy", f"bench --device {nope}", B["toy bench"] + ["--device", nope], (nope,)),
        ("llc", f"--known {nope}:2", with_flag("llc", "--known", f"{nope}:2"), (nope,)),
        ("llc", "--known regular:abc", with_flag("llc", "--known", "regular:abc"), ("regular:abc", "abc")),
        ("llc", "--known regular:0", with_flag("llc", "--known", "regular:0"), ("regular:0",)),
        ("llc", "--known monomial: (no exponents)", with_flag("llc", "--known", "monomial:"), ("monomial",)),
        ("llc", "--known rrr:1,2 (too few numbers)", with_flag("llc", "--known", "rrr:1,2"), ("rrr:1,2", "rrr")),
        ("llc", f"--model zoo:{nope}", with_flag("llc model", "--model", f"zoo:{nope}"), (nope,)),
        ("llc", f"--model python:{nope}:f", with_flag("llc model", "--model", f"python:{nope}:f"), (nope,)),
        ("llc", f"--model {nope}", with_flag("llc model", "--model", nope), (nope,)),
        ("llc", "--sampler nope", with_flag("llc", "--sampler", nope), (nope,)),
        ("zoo", f"zoo train {nope}", ["zoo", "train", nope], (nope,)),
        ("zoo", f"zoo {nope} (no such action)", ["zoo", nope], (nope,)),
        ("scrub", f"--model zoo:{nope}", with_flag("scrub", "--model", f"zoo:{nope}"), (nope,)),
        ("scrub", f"--model {nope}", with_flag("scrub", "--model", nope), (nope,)),
        ("circuit", f"--model zoo:{nope}", with_flag("circuit", "--model", f"zoo:{nope}"), (nope,)),
        ("circuit", f"--task {nope}", with_flag("circuit", "--task", nope), (nope,)),
        ("circuit", f"--method {nope}", with_flag("circuit", "--method", nope), (nope,)),
        ("circuit", f"--ablation {nope}", with_flag("circuit", "--ablation", nope), (nope,)),
        ("circuit", f"--sae {nope}=SAE", B["circuit"] + ["--sae", f"{nope}={m.sae}"], (nope,)),
        ("graph", f"--model zoo:{nope}", with_flag("graph", "--model", f"zoo:{nope}"), (nope,)),
        ("graph", "--bos nope", B["graph"] + ["--bos", nope], (nope,)),
        ("graph", "--prompt '' (empty)", with_flag("graph", "--prompt", ""), ("--prompt", "prompt")),
        ("decompose", f"--model toy:{nope}", with_flag("decompose", "--model", f"toy:{nope}"), (nope,)),
        ("decompose", f"--targets {nope}", B["decompose"] + ["--targets", nope], (nope,)),
        ("decompose", "--output-loss nope", B["decompose"] + ["--output-loss", nope], (nope,)),
        ("demo", f"--site {nope}", B["demo"] + ["--site", nope], (nope,)),
    ]
    # A hypothesis naming a site and a feature that do not exist.
    bad_hyp = (
        "model: zoo:parens\nroot: output\nnodes:\n  output:\n    feature: identity\n    children: [x]\n"
        f'  x:\n    sites: ["blocks.9:input"]\n    feature: {nope}\n'
    )

    def write_hyp(case: Path) -> None:
        (case / "hyp.yaml").write_text(bad_hyp)

    cases = [Case(c, "name", w, tuple(a), needles=n) for c, w, a, n in rows]
    cases.append(
        Case(
            "scrub",
            "name",
            f"hypothesis with feature {nope} and site blocks.9",
            ("scrub", "{case}/hyp.yaml", "--model", "zoo:parens", "--examples", "64", "--seeds", "2", "--json"),
            setup=write_hyp,
            needles=(nope, "blocks.9"),
        )
    )
    return cases


def default_of(key: str, flag: str):
    """The parser's default of ``flag`` in the command or action ``key`` (None when it has none)."""
    import ast

    parser = parsers()[{"llc model": "llc", "llc calibrate": "llc"}.get(key, key)]
    for action in parser._actions:
        if flag in action.option_strings:
            if action.default != argparse.SUPPRESS:
                return action.default
            # flags made from a config keep its default out of the namespace; the help says it
            shown = (action.help or "").rsplit("(default: ", 1)[-1].rstrip(")")
            try:
                return ast.literal_eval(shown)
            except (ValueError, SyntaxError):
                return None
    return None


# ---- input paths --------------------------------------------------------------------------------------------


def _text(case: Path) -> None:
    (case / "afile").write_text("not what was asked for\n")


def _binary(case: Path) -> None:
    (case / "binary.bin").write_bytes(random.Random(0).randbytes(4096))


def _adir(case: Path) -> None:
    (case / "adir").mkdir()


def _unreadable_copy(src: Path, is_dir: bool) -> Callable[[Path], None]:
    def setup(case: Path) -> None:
        dst = case / src.name
        if is_dir:
            dst.mkdir()
            for entry in src.iterdir():  # links: the folder itself is what cannot be read
                (dst / entry.name).symlink_to(entry.resolve())
        else:
            dst.write_bytes(src.read_bytes())
        unreadable(dst)

    return setup


# (base key, flag or "" for the positional, "file" | "dir", the valid value it replaces, how to put it in argv)
PATH_INPUTS = [
    ("harvest", "--model", "dir"),
    ("harvest", "--source", "file"),
    ("train", "--store", "dir"),
    ("evaluate", "--sae", "dir"),
    ("evaluate", "--store", "dir"),
    ("evaluate", "--model", "dir"),
    ("frontier", "--sae", "dir"),
    ("frontier", "--store", "dir"),
    ("report", "--sae", "dir"),
    ("report", "--store", "dir"),
    ("report", "--frontier", "file"),
    ("report", "--figures", "file"),
    ("scrub", "", "file"),
    ("scrub", "--model", "dir"),
    ("circuit", "--sae", "dir"),
    ("graph", "--transcoders", "dir"),
    ("graph", "--store", "dir"),
    ("graph", "--model", "dir"),
    ("decompose", "--model", "dir"),
    ("llc model", "--model", "file"),
]


def _place(key: str, argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value (or the positional hypothesis, or circuit's SITE=DIR) set to ``value``."""
    argv = list(argv)
    if key == "scrub" and not flag:
        argv[1] = value
        return argv
    if key == "circuit" and flag == "--sae":
        return argv + ["--sae", f"blocks.0={value}"]
    if key == "llc model" and flag == "--model":
        value = f"python:{value}:model"
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return argv + [flag, value]


def path_cases(m: Material) -> list[Case]:
    valid = {
        "--model": m.lm,
        "--store": m.store,
        "--sae": m.sae,
        "--transcoders": m.transcoders,
        "--source": m.text,
        "--frontier": m.text,
        "--figures": m.text,
        "": HYPOTHESIS,
    }
    cases = []
    for key, flag, want in PATH_INPUTS:
        base = BASE[key](m, "{case}/out")
        name = flag or "hypothesis"
        variants = [("missing", "{case}/missing", None)]
        if default_of(key, flag) != "":  # an empty string that is the flag's own default ("none") is no bad input
            variants.append(("empty string", "", None))
        if want == "file":
            variants += [("a folder", "{case}/adir", _adir), ("binary file", "{case}/binary.bin", _binary)]
        else:
            variants += [
                ("a file", "{case}/afile", _text),
                ("an empty folder", "{case}/adir", _adir),
                ("binary file", "{case}/binary.bin", _binary),
            ]
        src = valid.get(flag if key != "graph" or flag != "--store" else "--store", m.text)
        if key == "graph" and flag == "--store":
            src = m.tc_store
        if key == "llc model":
            src = None
        if src is not None:
            variants.append(("unreadable", "{case}/" + Path(src).name, _unreadable_copy(Path(src), want == "dir")))
        for label, value, setup in variants:
            needles = tuple(x for x in (flag, name.strip("-"), value.replace("{case}/", ""), Path(value).name) if x)
            cases.append(
                Case(
                    top(key),
                    "path",
                    f"{key}: {name} {label}",
                    tuple(_place(key, base, flag, value)),
                    setup=setup,
                    needles=needles,
                )
            )
    return cases


# ---- output locations ---------------------------------------------------------------------------------------

# (base key, flag, "dir" | "file")
OUTPUTS = [
    ("harvest", "--out", "dir"),
    ("train", "--out", "dir"),
    ("evaluate", "--results", "file"),
    ("frontier", "--out", "dir"),
    ("report", "--out", "file"),
    ("detect", "--report", "file"),
    ("detect", "--plots", "dir"),
    ("toy tms", "--out", "dir"),
    ("toy sweep", "--out", "dir"),
    ("toy data-dim", "--out", "dir"),
    ("toy bench", "--out", "dir"),
    ("llc model", "--out", "dir"),
    ("scrub", "--report", "file"),
    ("circuit", "--report", "file"),
    ("circuit", "--save", "file"),
    ("graph", "--out", "dir"),
    ("decompose", "--out", "dir"),
    ("demo", "--out", "dir"),
]


def output_cases(m: Material, full: Path | None, full_why: str) -> list[Case]:
    cases = []
    for i, (key, flag, want) in enumerate(OUTPUTS):
        base = BASE[key](m, "{case}/out")
        leaf = {"--save": "circuit.json", "--results": "results.json"}.get(
            flag, "out.html" if want == "file" else "out"
        )
        variants = [] if default_of(key, flag) == "" else [("empty string", "", None)]
        variants += [
            (
                "a file where a folder is needed" if want == "dir" else "a folder where a file is needed",
                "{case}/afile" if want == "dir" else "{case}/adir",
                _text if want == "dir" else _adir,
            ),
            ("a path under a regular file", "{case}/afile/" + leaf, _text),
            ("inside a read-only folder", "{case}/ro/" + leaf, lambda c: read_only(c / "ro")),
        ]
        if full is not None:
            variants.append(("on a full disk", f"{full}/c{i}/{leaf}", None))
        for label, value, setup in variants:
            argv = list(base)
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
            needles = tuple(
                x for x in (flag, value.replace("{case}/", ""), Path(value).name, Path(value).parent.name) if x
            )
            cases.append(Case(top(key), "output", f"{key}: {flag} {label}", tuple(argv), setup=setup, needles=needles))
    return cases


FULL_DISK_FOLDERS = [f"c{i}" for i in range(len(OUTPUTS))]


# ---- damaged files ------------------------------------------------------------------------------------------


def corrupt_cases(m: Material) -> list[Case]:
    """Each damaged file under a consumer that must read it, after the clean runs of those consumers (kind
    ``ref``, first in the list) whose result an exit-0 run must reproduce."""
    cases: list[Case] = []
    refs: dict[str, Case] = {}
    cache_env = lambda: (("MECHSCOPE_CACHE", "{case}/cache"),)

    def add(
        command: str,
        label: str,
        rel_file: str,
        make: Callable[[Path], None],
        argv: list[str],
        ref: str,
        env: tuple = (),
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        kinds = kinds or (SAFETENSORS_DAMAGE if rel_file.endswith(".safetensors") else JSON_DAMAGE)
        if ref not in refs:  # the same command on an undamaged copy: what an exit-0 run must reproduce
            refs[ref] = Case(command, "ref", f"clean run for {ref}", tuple(argv), env=env, setup=make, ref=ref)
        for how in kinds:

            def setup(case: Path, how=how) -> str:
                make(case)
                return damage(case / rel_file, how)

            cases.append(
                Case(
                    command,
                    "corrupt",
                    f"{label}: {how}",
                    tuple(argv),
                    env=env,
                    setup=setup,
                    needles=(Path(rel_file).name, Path(rel_file).parent.name),
                    ref=ref,
                    watch=rel_file,
                )
            )

    # An SAE (read by evaluate) and a store (read by train) and a training checkpoint (resumed by train).
    ev = BASE["evaluate"](m, "{case}/out")
    ev[ev.index("--sae") + 1] = "{case}/sae"
    for f in ("sae.safetensors", "cfg.json"):
        add("evaluate", f"SAE {f}", f"sae/{f}", lambda c: copy_tree(m.sae, c / "sae"), ev, "evaluate")
    tr = train_argv(m, "{case}/out", store="{case}/store")
    for f in ("train-00000.safetensors", "manifest.json"):
        add("train", f"store {f}", f"store/{f}", lambda c: copy_tree(m.store, c / "store"), tr, "train")
    resume = train_argv(m, "{case}/train")
    add(
        "train",
        "training checkpoint.safetensors (re-run of a finished run)",
        "train/checkpoint.safetensors",
        lambda c: copy_tree(m.train, c / "train"),
        resume,
        "train-again",
    )
    # The caches: zoo, toy, anomaly, and a decomposition's checkpoint.
    add(
        "circuit",
        "zoo cache parens/model.safetensors",
        "cache/zoo/parens/model.safetensors",
        lambda c: cache_with(m.base_cache, c / "cache", own=("zoo/parens",)),
        zoo_circuit_argv("parens"),
        "circuit-parens",
        env=cache_env(),
    )
    add(
        "circuit",
        "zoo cache parens/recipe.json",
        "cache/zoo/parens/recipe.json",
        lambda c: cache_with(m.base_cache, c / "cache", own=("zoo/parens",)),
        zoo_circuit_argv("parens"),
        "circuit-parens",
        env=cache_env(),
    )
    add(
        "zoo",
        "zoo cache parens/recipe.json",
        "cache/zoo/parens/recipe.json",
        lambda c: cache_with(m.base_cache, c / "cache", own=("zoo/parens",)),
        ["zoo", "list", "--json"],
        "zoo-list",
        env=cache_env(),
    )
    add(
        "toy",
        "toy cache (tms model)",
        "cache/toy/" + next(iter(sorted((m.toy_cache / "toy").glob("*.safetensors")))).name,
        lambda c: copy_tree(m.toy_cache, c / "cache"),
        BASE["toy tms"](m, "{case}/out"),
        "toy tms",
        env=cache_env(),
    )
    anomaly = next(
        iter(sorted((m.cache / "anomaly").glob("backdoor-lm-*.safetensors")))
    )  # the task BASE["detect"] reads
    add(
        "detect",
        f"anomaly cache {anomaly.name}",
        f"cache/anomaly/{anomaly.name}",
        lambda c: cache_with(m.cache, c / "cache", own=("anomaly",)),
        BASE["detect"](m, ""),
        "detect",
        env=cache_env(),
    )
    dec = BASE["decompose"](m, "{case}/dec")
    add(
        "decompose",
        "decomposition spd-checkpoint.safetensors (resumed)",
        "dec/spd-checkpoint.safetensors",
        lambda c: copy_tree(m.decompose, c / "dec"),
        dec,
        "decompose-again",
        env=(),
    )
    return list(refs.values()) + cases


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
