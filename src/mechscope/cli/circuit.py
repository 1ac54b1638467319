"""``mechscope circuit --model zoo:induction|zoo:parens|smollm2|PATH [--task …|--pairs FILE] --method
atp|atp*|eap|eap-ig|acdc|exact [--json] [--report PATH] [--save circuit.json] [--sae SITE=DIR … [--latents-per-site N]]``.

``--pairs FILE`` is a user's own task on a Hugging Face model: a JSON or YAML list of
``{clean, corrupt, answer, wrong}`` prompt pairs (:func:`mechscope.circuits.tasks.load_pairs`).

With ``--sae`` the nodes are SAE latents and each site's error term (one SAE spliced per site, see
:mod:`mechscope.circuits.latents`) instead of heads and MLPs; the circuit is a node circuit and faithfulness
ablates the latents and error terms outside it.

Prints the circuit (nodes and edges with their scores), its faithfulness beside the full model, the empty
circuit and the rock, the agreement of the scores with exact patching on a sampled budget, and what the method
cost. ``--save`` writes the circuit JSON and, for zoo models, ``<stem>.hypothesis.yaml`` for ``mechscope scrub``.

Under ``torchrun`` the exact patches (``--method exact``'s one forward per node, and the ``--budget`` of exact
patches the other methods are checked against) are dealt out over the ranks and gathered; rank 0 prints and
writes the result of one process.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mechscope.circuits.discover import DiscoverConfig, discover
from mechscope.circuits.tasks import DEFAULT_TASK, TASKS
from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.distributed import World, WorldConfig
from mechscope.errors import UsageError, flag_names
from mechscope.evals.metrics import percent, percent_interval
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.models.loading import names_language_model
from mechscope.models.resolve import RunOn, language_model, spec_kind
from mechscope.preflight import check_outputs
from mechscope.zoo import ZOO

# The known answer on zoo:induction (the recipe's previous-token head and induction heads).
INDUCTION_TRUTH = {"previous_token_head": "L0H1", "induction_heads": ["L1H0", "L1H1"]}


@dataclass(frozen=True)
class CircuitRunConfig:
    """Which model and task a circuit is found on."""

    model: str = "zoo:induction"
    """zoo:induction | zoo:parens | smollm2 (or a local Llama-style Hugging Face folder, with --task ioi)."""
    task: str = ""
    """induction | parens | ioi (empty: the model's own: induction, parens, ioi for smollm2)."""
    examples: int = 200
    """Clean/corrupted pairs (one batch)."""
    report: str = ""
    """Write an HTML report with the circuit drawn as an SVG graph to this path."""
    save: str = ""
    """Write the circuit as JSON to this path (and the causal-scrubbing hypothesis beside it)."""
    sae: tuple[str, ...] = ()
    """SITE=DIR … : splice the SAE saved in DIR at SITE (one per site); the nodes are then every latent active on
    the clean or corrupted inputs and each site's error term (a latent-level circuit, Marks et al. 2024)."""
    latents_per_site: int = 0
    """With --sae: score only each site's N latents of largest |AtP| (0: all active latents)."""
    pairs: str = ""
    """A JSON/YAML file of prompt pairs {clean, corrupt, answer, wrong} (your own task on --model, a Hugging Face
    folder or smollm2; every pair is an example, --examples does not apply)."""

    def __post_init__(self) -> None:
        if self.examples < 2:
            raise UsageError(f"--examples must be ≥ 2, got {self.examples}")
        if self.latents_per_site < 0:
            raise UsageError(f"--latents-per-site must be ≥ 0, got {self.latents_per_site}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, CircuitRunConfig)
    add_config_arguments(p, DiscoverConfig)
    add_config_arguments(p, RunOn)
    add_config_arguments(p, WorldConfig)
    add_json_flag(p)


def known_answer(result: dict[str, Any]) -> dict[str, Any]:
    """Whether the induction circuit holds the known heads, and the edge previous-token head → induction key."""
    names = {n["name"].split(".")[0] for n in result["nodes"]}
    edges = {(e["writer"], e["reader"]) for e in result["edges"]}
    prev, ind = INDUCTION_TRUTH["previous_token_head"], INDUCTION_TRUTH["induction_heads"]
    return {
        **INDUCTION_TRUTH,
        "heads_in_circuit": sorted(n for n in names if n.startswith("L")),
        "contains_known_heads": prev in names and all(h in names for h in ind),
        "prev_token_feeds_induction_key": [f"{prev}->{h}.k" for h in ind if (prev, f"{h}.k") in edges],
    }


def run(args: argparse.Namespace) -> int:
    run_cfg = from_namespace(CircuitRunConfig, args)
    cfg = from_namespace(DiscoverConfig, args)
    on = from_namespace(RunOn, args)
    task_name = _task_for(run_cfg.model, run_cfg.task, bool(run_cfg.pairs))
    check_outputs(args, files=["report", "save"])
    with flag_names({"collective_timeout_s": "--collective-timeout-s", "device": "--device"}):
        world = World.from_env(on.device, from_namespace(WorldConfig, args).collective_timeout_s)
    try:  # under torchrun the exact patches are dealt out over the ranks; rank 0 writes and prints
        result = _find(run_cfg, cfg, replace(on, device=world.device), task_name, world, quiet=args.json)
    finally:
        world.close()
    if not world.is_main:
        return 0
    with human_lines_to_stderr(args.json) as stdout:
        if run_cfg.save:
            from mechscope.circuits.export import save_circuit

            result["saved"] = [str(p) for p in save_circuit(run_cfg.save, result, run_cfg.model)]
        if run_cfg.report:
            from mechscope.circuits.report import write_circuit_report

            result["report"] = str(write_circuit_report(run_cfg.report, result, {**asdict(run_cfg), **asdict(cfg)}))
        if args.json:
            out = {k: v for k, v in result.items() if k != "graph"}
            print_json(out, stdout)
        else:
            _print(result)
    return 0


def _find(
    run_cfg: CircuitRunConfig, cfg: DiscoverConfig, on: RunOn, task_name: str, world: World, quiet: bool
) -> dict[str, Any]:
    """The circuit of the run: the task built, the method run (exact patches shared by ``world``'s ranks). What is
    printed on the way goes to stderr with ``quiet`` and on every rank but 0 (stdout carries rank 0's result)."""
    with human_lines_to_stderr(quiet or not world.is_main):
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        if run_cfg.pairs:
            model, task = _pairs(run_cfg.model, run_cfg.pairs, on)
        else:
            model, task = (
                TASKS[task_name](run_cfg.examples, seed=cfg.seed + 1, device=on.device, dtype=on.dtype)
                if task_name != "ioi"
                else TASKS["ioi"](
                    run_cfg.examples, seed=cfg.seed + 1, model=run_cfg.model, device=on.device, dtype=on.dtype
                )
            )
        if run_cfg.sae:
            result = _latent_circuit(model, task, cfg, run_cfg, world)
        else:
            result = discover(model, task, cfg, world=world)
        result["model"] = run_cfg.model
        result["total_wall_s"] = time.perf_counter() - t0
        if task_name == "induction" and not run_cfg.sae:
            result["known_answer"] = known_answer(result)
    return result


def _pairs(model: str, pairs: str, on: RunOn) -> tuple[Any, Any]:
    from mechscope.circuits.tasks import load_pairs, pairs_task

    lm = language_model(model, device=on.device, dtype=on.dtype)
    return lm.model, pairs_task(lm.model, lm.tokenizer, load_pairs(pairs), name=Path(pairs).stem)


def _task_for(model: str, task: str, pairs: bool = False) -> str:
    """The task ``--task`` names, or the model's own; refuses a model or task that cannot run, naming the flag."""
    models = (
        "zoo:induction, zoo:parens, an embedded model (smollm2, gemma3-270m), a Hugging Face folder or a cached hub id"
    )
    if pairs:
        if task:
            raise UsageError("--pairs is the task; drop --task (or drop --pairs to run a built-in task)")
        if not names_language_model(model):  # zoo:/toy: specs name no language model either
            raise UsageError(
                f"--pairs needs a language model with a tokenizer (an embedded model, a Hugging Face folder "
                f"or a cached hub id), not {model!r}"
            )
        return "pairs"
    if task and task not in TASKS:
        raise UsageError(
            f"--task: unknown task {task!r}; choose one of {', '.join(TASKS)} (or leave it out: the model's own)"
        )
    if spec_kind(model, check=False) != "lm" or not model.strip():
        own = DEFAULT_TASK.get(model)
        if own is None:
            why = (
                "empty"
                if not model.strip()
                else "no circuit task runs on it"
                if model.removeprefix("zoo:") in ZOO
                else "unknown model"
            )
            raise UsageError(f"--model {model!r}: {why}; choose {models}")
        if task and task != own:
            where = (
                "a Hugging Face language model (smollm2, gemma3-270m, a folder or a hub id)"
                if task == "ioi"
                else f"zoo:{task}"
            )
            raise UsageError(
                f"--task {task} runs on {where}, not {model}; drop --task to run {model}'s own task ({own})"
            )
        return own
    if task and task != "ioi":
        raise UsageError(f"--task {task} runs on zoo:{task}, not {model}; drop --task to run ioi on {model}")
    if not names_language_model(model):
        raise UsageError(
            f"--model {model!r}: not a zoo model, an embedded model, an existing folder nor a hub id (org/name); "
            f"choose {models}"
        )
    return "ioi"


def _latent_circuit(
    model: Any, task: Any, cfg: DiscoverConfig, run_cfg: CircuitRunConfig, world: World | None = None
) -> dict[str, Any]:
    """discover() over SAE latents and error terms at every ``--sae`` site (splices removed on return)."""
    from mechscope.circuits.latents import (
        latent_circuit_nodes,
        load_site_saes,
        parse_sae_specs,
        spliced_many,
    )

    saes = load_site_saes(parse_sae_specs(run_cfg.sae))
    sites = [s for s, _ in saes]
    t0 = time.perf_counter()
    with spliced_many(model, saes) as names:
        scored, every, selection = latent_circuit_nodes(
            model, sites, names, task.clean, task.corrupt, task.metric, run_cfg.latents_per_site
        )
        selection["wall_s"] = time.perf_counter() - t0
        result = discover(model, task, cfg, nodes=scored, ablate=every, world=world)
    result["latent_sites"] = {
        s: {
            "sae": dict(parse_sae_specs(run_cfg.sae))[s],
            "splice": n,
            "active": selection["active"][s],
            "scored": selection["scored"][s],
        }
        for s, n in zip(sites, names)
    }
    result["latent_selection"] = selection
    return result


def _print(r: dict[str, Any]) -> None:
    f = r["faithfulness"]
    print(
        f"{r['method']} on {r['model']} / {r['task']}  ({r['metric']}: clean {r['clean_metric']:.4f}, corrupted {r['corrupt_metric']:.4f})"
    )
    print(f"  circuit: {len(r['nodes'])} nodes, {len(r['edges'])} edges")
    for site, v in r.get("latent_sites", {}).items():
        print(f"    SAE at {site}: {v['active']} latents active, {v['scored']} scored (+ error term)")
    for n in r["nodes"][:20]:
        print(f"    node {n['name']:<16} {'' if n.get('effect') is None else format(n['effect'], '+.4f')}")
    for e in r["edges"][:30]:
        print(
            f"    edge {e['writer'] + ' -> ' + e['reader']:<22} {'' if e.get('effect') is None else format(e['effect'], '+.4f')}"
        )
    lo, hi = f["recovered_ci"]
    print(f"  faithfulness ({f['ablation']} ablation, {f['examples']} examples; loss in nats):")
    for k in ("full", "circuit", "empty", "rock"):
        a, b = f[f"loss_{k}_ci"]
        print(f"    {k:<8} {f[f'loss_{k}']:.4f}  (95% CI {a:.4f}–{b:.4f})")
    print(
        f"    recovered {percent(f['recovered'])}  (95% CI {percent_interval(lo, hi)})"
        + ("  — worse than the rock: explains nothing" if f["worse_than_rock"] else "")
    )
    if f.get("recovered_note"):
        print(f"    warning: loss recovered vs the empty circuit is n/a: {f['recovered_note']}")
    ag = r.get("agreement_with_exact")
    if ag:
        print(
            f"  agreement with exact patching on {ag['budget']} sampled: Spearman {ag['spearman']:.3f}, "
            f"AUC(top {ag['n_top']}) {ag['auc_top']:.3f}"
        )
    c = r["cost"]
    print(f"  cost: {c['forwards']} forwards, {c['backwards']} backwards, {c['wall_s']:.2f} s")
    if "known_answer" in r:
        k = r["known_answer"]
        print(
            f"  known answer: contains {k['previous_token_head']} and {'/'.join(k['induction_heads'])}: {k['contains_known_heads']}; "
            f"edges {', '.join(k['prev_token_feeds_induction_key']) or 'none'}"
        )
    for p in r.get("saved", []):
        print(f"  wrote {p}")
    if "report" in r:
        print(f"  wrote {r['report']}")
