"""``mechscope convert SRC DST --to FORMAT [--json]``: rewrite a dictionary in another on-disk format.

SRC is read in whichever format it is (:data:`mechscope.sae.formats.FORMATS` detects it); DST is the folder
written in FORMAT, with the same codes and outputs. A format mechscope only reads, or an architecture the
target format cannot hold, ends in one line naming it.
"""

from __future__ import annotations

import argparse

from mechscope.jsonout import add_json_flag, print_json
from mechscope.preflight import writable_folder
from mechscope.sae.formats import FORMATS, convert, writable
from mechscope.sae.io import add_load_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mechscope convert``."""
    parser.add_argument(
        "src",
        help="the dictionary to read: a folder (or its weights file) of any known format ("
        + ", ".join(FORMATS)
        + "), or a hub id org/name[:subfolder] in the Hugging Face cache",
    )
    parser.add_argument("dst", help="the folder to write")
    parser.add_argument("--to", required=True, choices=writable(), help="the format to write")
    add_load_arguments(parser)
    add_json_flag(parser)
    parser.set_defaults(_parameter_flags={**(parser.get_default("_parameter_flags") or {}), "to": "--to"})


def run(args: argparse.Namespace) -> int:
    """The ``mechscope convert`` command; 0 on success."""
    writable_folder(args.dst, "DST")
    source, out = convert(args.src, args.dst, args.to, scaling_factor=args.sae_scaling_factor)
    if args.json:
        print_json({"src": args.src, "source_format": source, "dst": str(out), "format": args.to})
    else:
        print(f"{args.src} ({source}) → {out} ({args.to})")
    return 0
