"""``mechscope zoo list [--json]`` and ``mechscope zoo train NAME [--force] [--json]``."""

from __future__ import annotations

import argparse

from mechscope.config import to_dict
from mechscope.jsonout import print_json
from mechscope.zoo import ZOO, store, train_zoo


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="the zoo's models, whether each is trained here, and its metrics")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    tr = sub.add_parser("train", help="train one zoo model into the cache (once per recipe)")
    tr.add_argument("name", choices=list(ZOO), help="which model")
    tr.add_argument("--force", action="store_true", help="retrain even when the cache holds this recipe")
    tr.add_argument("--json", action="store_true", help="print one JSON object")


def _entry(name: str) -> dict:
    rec = store.read_recipe(name) or {}
    return {"name": name, "trained": store.is_current(name, ZOO[name]), "digest": store.digest(name, ZOO[name])[:12],
            "path": str(store.zoo_dir(name)), "metrics": rec.get("metrics", {}) if store.is_current(name, ZOO[name]) else {},
            "config": to_dict(ZOO[name])}


def run_train(args: argparse.Namespace) -> int:
    zm = train_zoo(args.name, force=args.force)
    out = {**_entry(args.name), "checkpoints": len(zm.history)}
    if args.json:
        print_json(out)
    else:
        print(f"{args.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in zm.metrics.items()) + f"  ({out['path']})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    entries = [_entry(n) for n in ZOO]
    if args.json:
        print_json({"models": entries})
        return 0
    for e in entries:
        m = e["metrics"]
        status = ("val_accuracy %.4f" % m["val_accuracy"]) if m else "not trained (mechscope zoo train %s)" % e["name"]
        print(f"{e['name']:<10} {status}  {e['path']}")
    return 0


ACTIONS = {"list": run_list, "train": run_train}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
