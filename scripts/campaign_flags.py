"""The campaign's cases on flags (scripts/campaign.py): a malformed number for every int/float flag of every command,
read from its parser, and an unknown name for every flag that takes a name.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from campaign_base import BASE, Case, Material, top, train_argv

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
    "--latents@explain",
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
NEGATIVE_OK = {"--seed", "--logit-position", "--min-cos"}
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
