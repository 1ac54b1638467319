"""``mechscope harvest``: activations at sites of a model, streamed into a resumable store.

Under ``torchrun`` (``torchrun --nproc-per-node N -m mechscope harvest …``) every rank harvests its share of the
shards into the one store and rank 0 commits the manifest (docs/scaling.md); only rank 0 prints. A model too large
for one device runs spread over the machine's devices with ``--device-map auto`` (one process)."""

from __future__ import annotations

import argparse

from mechscope.config import add_arguments as add_config_arguments, from_namespace
from mechscope.data.text import TextCorpusConfig
from mechscope.distributed import World, WorldConfig
from mechscope.errors import flag_names
from mechscope.harvest import HarvestConfig, harvest
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, print_json
from mechscope.models.loading import DTYPES
from mechscope.models.resolve import RunOn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="store folder (re-run the same command to resume)")
    parser.add_argument(
        "--site",
        dest="sites",
        nargs="+",
        default=argparse.SUPPRESS,
        help="sites to read (module paths, wildcards, or aliases such as resid_post.6)",
    )
    add_config_arguments(parser, HarvestConfig, skip=("sites",))
    add_config_arguments(parser, TextCorpusConfig)
    add_config_arguments(parser, WorldConfig)
    add_config_arguments(parser, RunOn, skip=("dtype",))  # --dtype is the store's here; the model's is --model-dtype
    parser.add_argument(
        "--model-dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="the model's dtype while it runs (the store's is --dtype)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread a model too large for one device over the GPUs and the cpu, layer by layer "
        "(accelerate's device_map; one process, not under torchrun; --device is then not used)",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    cfg = from_namespace(HarvestConfig, args)
    corpus = from_namespace(TextCorpusConfig, args)
    on = from_namespace(RunOn, argparse.Namespace(device=getattr(args, "device", "cpu")), dtype=args.model_dtype)
    with flag_names(
        {
            "out": "--out",
            "collective_timeout_s": "--collective-timeout-s",
            "device": "--device",
            "device_map": "--device-map",
        }
    ):
        world = World.from_env(on.device, from_namespace(WorldConfig, args).collective_timeout_s)
        try:
            with human_lines_to_stderr(args.json) as stdout:
                store = harvest(
                    cfg, corpus, args.out, device=on.device, dtype=on.dtype, world=world, device_map=args.device_map
                )
                if world.is_main:
                    print(
                        f"store: {store.path}  sites: {', '.join(store.sites)}  rows: {store.n_rows():,} train, {store.n_rows('val'):,} val"
                    )
        finally:
            world.close()
    if args.json and world.is_main:
        print_json(
            {
                "store": store.path.resolve(),
                "model": store.manifest.get("model_id"),
                "sites": {s: store.d(s) for s in store.sites},
                "rows": {"train": store.n_rows(), "val": store.n_rows("val")},
            },
            stdout,
        )
    return 0
