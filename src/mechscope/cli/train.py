"""``mechscope train``: flags generated from the configs, architecture choices from the registry.

    mechscope train --store DIR --site SITE --arch topk --latents 8192 --k 32 --out DIR
    mechscope train ... --sweep k=16,32,64 --sweep lr=1e-4,3e-4     # 6 SAEs, one pass over the data
    torchrun --nproc-per-node 2 -m mechscope train ... --sweep k=16,32 --distribute-members   # one SAE per rank
    torchrun --nproc-per-node 4 -m mechscope train --arch transcoder --per-site \
        --site mlp_in.0,mlp_in.1,... --target-site mlp_out.0,mlp_out.1,... ...      # a transcoder per layer, layers dealt out

Re-running the same command after an interruption resumes from ``DIR/checkpoint.safetensors``.
Each SAE is saved to ``DIR/<name>/`` (cfg.json + sae.safetensors + eval.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import typing
from typing import Any, get_args, get_origin

from mechscope import config
from mechscope.distributed import World, WorldConfig
from mechscope.errors import UsageError, flag_message, flag_names
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.preflight import check_device, writable_folder
from mechscope.sae.base import REGISTRY, SAEConfig
from mechscope.sae.from_store import site_widths, train_from_store, train_per_site
from mechscope.sae.trainer import (
    Member,
    OptimConfig,
    TrainConfig,
)


def _arch_only_fields() -> dict[str, set[str]]:
    """Field name → the architectures whose config has it (beyond the shared SAEConfig fields)."""
    shared = {f.name for f in dataclasses.fields(SAEConfig)}
    owners: dict[str, set[str]] = {}
    for name, cls in REGISTRY.items():
        for f in dataclasses.fields(cls.config_cls):
            if f.name not in shared:
                owners.setdefault(f.name, set()).add(name)
    return owners


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every flag of ``mechscope train`` to ``parser``."""
    parser.add_argument("--store", required=True, help="activation store folder (from `mechscope harvest`)")
    parser.add_argument(
        "--site", required=True, help="site in the store to train on (crosscoders: several, comma-separated)"
    )
    parser.add_argument(
        "--target-site",
        default=None,
        help="transcoders only: the site they predict from --site (e.g. --site mlp_in.6 --target-site mlp_out.6)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder: checkpoint, train_log.jsonl and one folder per SAE"
    )
    parser.add_argument("--arch", choices=sorted(REGISTRY), default="topk", help="SAE architecture")
    parser.add_argument(
        "--per-site",
        action="store_true",
        help="one sweep at each of the comma-separated --site (transcoders: to the --target-site at the same "
        "place), each into OUT/SITE/; under torchrun the sites are dealt out over the ranks",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="train one SAE per value (repeat for a grid); FIELD is any SAE or optimiser field",
    )
    config.add_arguments(parser, SAEConfig, skip=("d_in",))
    seen = {f.name for f in dataclasses.fields(SAEConfig)} | {"d_out", "sites", "layers"}  # from the store and --site
    for cls in REGISTRY.values():
        config.add_arguments(parser, cls.config_cls, skip=tuple(seen))
        seen |= {f.name for f in dataclasses.fields(cls.config_cls)}
    config.add_arguments(parser, OptimConfig)
    config.add_arguments(parser, TrainConfig)
    config.add_arguments(parser, WorldConfig)
    add_json_flag(parser)


def _parse_value(cls: type, name: str, text: str) -> Any:
    """One ``--sweep`` value as the field's type; a value of the wrong type is a usage error naming it."""
    hint = typing.get_type_hints(cls)[name]
    if get_origin(hint) is typing.Literal:
        if text not in [str(c) for c in get_args(hint)]:
            raise UsageError(f"--sweep {name}={text}: {name} is one of {', '.join(map(str, get_args(hint)))}")
        hint = type(get_args(hint)[0])
    if hint is bool:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if text.lower() not in words:
            raise UsageError(f"--sweep {name}={text}: {name} is true or false")
        return words[text.lower()]
    if hint in (int, float):
        try:
            return config.finite_float(text) if hint is float else int(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise UsageError(
                f"--sweep {name}={text}: {name} takes {'finite ' * (hint is float)}{hint.__name__} values, "
                f"e.g. --sweep {name}=1,2"
            ) from None
    return text


def sweep_members(sae: SAEConfig, optim: OptimConfig, sweeps: list[str]) -> list[Member]:
    """The grid of members given by ``FIELD=V1,V2`` strings over SAE and optimiser fields."""
    sae_fields = {f.name for f in dataclasses.fields(sae)}
    optim_fields = {f.name for f in dataclasses.fields(optim)}
    axes: list[tuple[str, list[str]]] = []
    for spec in sweeps:
        field, _, values = spec.partition("=")
        if not values or not field:
            raise UsageError(f"--sweep {spec!r}: expected FIELD=V1,V2,... (e.g. --sweep k=16,32)")
        name = field.replace("-", "_")
        if name not in sae_fields | optim_fields:
            raise UsageError(
                f"--sweep {field}: no such field of {type(sae).__name__} or OptimConfig; "
                "sweep a field that `mechscope train --help` lists for this --arch"
            )
        axes.append((name, values.split(",")))
    members = []
    for combo in itertools.product(*[[(f, v) for v in vs] for f, vs in axes]):
        s_over = {f: _parse_value(type(sae), f, v) for f, v in combo if f in sae_fields}
        o_over = {f: _parse_value(OptimConfig, f, v) for f, v in combo if f in optim_fields}
        name = "-".join([_arch_name(sae)] + [f"{f}{v}" for f, v in combo])
        try:
            members.append(Member(dataclasses.replace(sae, **s_over), dataclasses.replace(optim, **o_over), name=name))
        except ValueError as err:  # UsageError included: say which member of the grid it refused
            names = {f: f for f in sae_fields | optim_fields}  # the message's `field` as the --sweep spelling
            raise UsageError(
                f"--sweep {', '.join(f'{f}={v}' for f, v in combo)}: {flag_message(str(err), names)}"
            ) from err
    return members


def _arch_name(sae: SAEConfig) -> str:
    return next(name for name, cls in REGISTRY.items() if cls.config_cls is type(sae))


def run_train(args: argparse.Namespace) -> int:
    """Run ``mechscope train`` from parsed flags; prints one JSON line of held-out metrics per SAE
    (with ``--json``: one object, ``{"saes": [...]}``, and the progress on stderr)."""
    with human_lines_to_stderr(args.json) as stdout:
        rows = _train(args)
        if rows is None:  # another rank than 0 of a torchrun job: rank 0 prints
            return 0
        if args.json:
            print_json({"out": args.out, "saes": rows}, stdout)
        else:
            for row in rows:
                print_json(row)
    return 0


def _train(args: argparse.Namespace) -> list[dict] | None:
    """Train the SAEs the flags describe; one dict of held-out metrics per SAE (None on ranks other than 0)."""
    from mechscope.store import ActivationStore

    cls = REGISTRY[args.arch]
    foreign = [f for f, owners in _arch_only_fields().items() if hasattr(args, f) and args.arch not in owners]
    if foreign:
        raise UsageError(
            f"--{', --'.join(x.replace('_', '-') for x in foreign)} do(es) not apply to --arch {args.arch}; "
            "drop them or choose an architecture that has them"
        )
    train_cfg = config.from_namespace(TrainConfig, args)
    check_device(train_cfg.device)
    writable_folder(args.out)
    store = ActivationStore(args.store)
    if bool(args.target_site) != cls.paired:
        raise UsageError(
            f"--arch {args.arch} reads one site and predicts another; add --target-site (e.g. --site mlp_in.6 "
            "--target-site mlp_out.6)"
            if cls.paired
            else f"--target-site needs a transcoder architecture (transcoder, skip_transcoder); --arch {args.arch} "
            "reconstructs the site it reads: drop --target-site"
        )
    site = tuple(s.strip() for s in args.site.split(",")) if "," in args.site else args.site  # crosscoders: several
    target = (
        tuple(s.strip() for s in args.target_site.split(","))
        if args.target_site and "," in args.target_site
        else args.target_site
    )
    if args.per_site:  # one SAE (sweep) per site: the widths of the first; train_from_store sets each site's own
        sites = [site] if isinstance(site, str) else list(site)
        targets = None if target is None else [target] if isinstance(target, str) else list(target)
        site, target = sites[0], None if targets is None else targets[0]
    sae = config.from_namespace(cls.config_cls, args, prefix="", **site_widths(store, cls.config_cls, site, target))
    members = sweep_members(sae, config.from_namespace(OptimConfig, args), args.sweep)
    with flag_names(
        {
            "site": "--site",
            "target_site": "--target-site",
            "out_dir": "--out",
            "device": "--device",
            "collective_timeout_s": "--collective-timeout-s",
            "distribute_members": "--distribute-members",
            "shard_layers": "--shard-layers",
            "sites": "--site",
            "target_sites": "--target-site",
        }
    ):
        world = World.from_env(train_cfg.device, config.from_namespace(WorldConfig, args).collective_timeout_s)
        try:
            if args.per_site:
                per_site = train_per_site(
                    store,
                    sites,
                    members,
                    train_cfg,
                    args.out,
                    target_sites=targets,
                    metadata={"command": "mechscope train"},
                    world=world,
                )
                results = {f"{s}/{name}": m for s, by_name in per_site.items() for name, m in by_name.items()}
            else:
                results = train_from_store(
                    store,
                    site,
                    members,
                    train_cfg,
                    args.out,
                    metadata={"command": "mechscope train"},
                    target_site=target,
                    world=world,
                )
        finally:
            world.close()
    if not world.is_main:
        return None
    return [
        {"sae": name, "folder": f"{args.out}/{name}", **{k: round(v, 5) for k, v in metrics.items()}}
        for name, metrics in results.items()
    ]


# The names the main `mechscope` command looks up in every subcommand module.
add_arguments = add_train_arguments
run = run_train
