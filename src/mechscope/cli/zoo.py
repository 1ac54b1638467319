"""``mechscope zoo list [--json]`` and ``mechscope zoo train NAME [--force] [--json]``.

A cached model whose files fail their checks (:func:`mechscope.zoo.store.state`) is listed as damaged (then
``zoo list`` ends in one line naming the file, exit 1, after the whole listing), and
``zoo train`` trains it again without ``--force`` (a note on stderr says why; the JSON has
``"damaged_before"``): asking to train a model the cache cannot vouch for should leave a good one.
"""

from __future__ import annotations

import argparse
import sys

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


def _entry(name: str, known: tuple[str, str | None] | None = None) -> dict:
    status, problem = known or store.state(name, ZOO[name])
    rec = (store.read_recipe(name) or {}) if status == "trained" else {}
    return {
        "name": name,
        "trained": status == "trained",
        "state": status,
        "problem": problem,
        "digest": store.digest(name, ZOO[name])[:12],
        "path": str(store.zoo_dir(name)),
        "metrics": rec.get("metrics", {}),
        "config": to_dict(ZOO[name]),
    }


def run_train(args: argparse.Namespace) -> int:
    status, problem = store.state(args.name, ZOO[args.name])
    if problem:  # train_zoo trains a damaged model again: say so, since the user may want to know why
        print(f"mechscope: note: the cached model is damaged, training it again: {problem}", file=sys.stderr)
    zm = train_zoo(args.name, force=args.force)
    out = {
        **_entry(args.name, ("trained", None)),
        "checkpoints": len(zm.history),
        "trained_now": args.force or status != "trained",
        "damaged_before": problem,
    }
    if args.json:
        print_json(out)
    else:
        print(f"{args.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in zm.metrics.items()) + f"  ({out['path']})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    entries = [_entry(n) for n in ZOO]
    if args.json:
        print_json({"models": entries})
    else:
        for e in entries:
            if e["state"] == "trained":
                status = f"val_accuracy {e['metrics']['val_accuracy']:.4f}"
            elif e["state"] == "damaged":
                status = f"damaged: {e['problem']}"
            else:
                status = f"not trained (mechscope zoo train {e['name']})"
            print(f"{e['name']:<10} {status}  {e['path']}")
    damaged = [e for e in entries if e["state"] == "damaged"]
    if damaged:  # the listing is complete, but a damaged cache must not exit 0: one line, the first problem
        more = f" (and {len(damaged) - 1} more damaged model(s), listed above)" if len(damaged) > 1 else ""
        raise store.ZooCacheError(damaged[0]["problem"] + more)
    return 0


ACTIONS = {"list": run_list, "train": run_train}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
