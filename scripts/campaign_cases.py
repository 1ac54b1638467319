"""The campaign's cases on files (scripts/campaign.py): bad input paths, bad output locations and damaged files, one
:class:`~campaign_base.Case` each; the cases on flags are in campaign_flags.py, the material in campaign_base.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from campaign_base import BASE, HYPOTHESIS, Case, Material, top, train_argv, zoo_circuit_argv
from campaign_damage import JSON_DAMAGE, SAFETENSORS_DAMAGE, cache_with, copy_tree, damage, read_only, unreadable
from campaign_flags import default_of

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
