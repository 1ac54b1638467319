"""Library errors name Python parameters (`target_site`); only the command's modules speak of ``--flags``.

A notebook user told to "pass --target-site" has no such thing to pass. The command shows the flag anyway:
:func:`mechscope.errors.flag_names` (wrapped round every command by ``mechscope.cli.main``) turns a backticked
parameter its parser sets into the flag.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mechscope
from mechscope.cli import main, parser_flags
from mechscope.errors import MechscopeError, UsageError, flag_names

SRC = Path(mechscope.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# A command line the message suggests, in backticks (`mechscope zoo train parens --force`, `pip install --no-deps x`):
# the user runs it in a shell whatever called the library, so its flags are right in either place.
COMMAND_LINE = re.compile(r"`(?:mechscope|pip|hf) [^`]*`")

# Where a flag in a non-CLI module is legitimate, and why.
ALLOWED = {
    # The CLI generator itself: it turns fields into flags and reads `--no-x` back.
    "config.py",
    # Not an error: the report's CSS custom properties (`var(--fg)`).
    "report/assets.py",
}


def _is_cli_module(rel: str) -> bool:
    return rel == "cli.py" or rel.endswith("/cli.py") or rel.startswith("commands/")


def _text(node: ast.AST) -> str | None:
    """A string constant, or an f-string with each `{…}` written as {}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _raises_or_warns(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Raise) or (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                                            and n.func.attr == "warn") for n in ast.walk(node))


def _message_strings(tree: ast.Module) -> list[tuple[int, str]]:
    """Strings that can end up in an error: every non-docstring string of a function that raises or warns (its
    parameter defaults included: a ``flag="--out"`` default is a message part), and module-level strings a raise
    names. Strings given to ``add_argument`` (flag definitions and help) are not messages."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
    roots: list[ast.AST] = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                            and _raises_or_warns(n)]
    raised_names = {n.id for r in ast.walk(tree) if isinstance(r, ast.Raise) for n in ast.walk(r) if isinstance(n, ast.Name)}
    roots += [a for a in tree.body if isinstance(a, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id in raised_names for t in a.targets)]
    found = []
    for root in roots:
        for node in ast.walk(root):
            text = _text(node)
            if id(node) not in skip and text is not None:
                found.append((node.lineno, text))
    return found


def _flags_in_library_messages() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if _is_cli_module(rel) or rel in ALLOWED:
            continue
        for line, text in _message_strings(ast.parse(path.read_text(encoding="utf-8"))):
            if FLAG.search(COMMAND_LINE.sub("", text)):
                bad.append(f"{rel}:{line}: {text!r}")
    return sorted(set(bad))


def test_no_library_error_message_names_a_flag():
    bad = _flags_in_library_messages()
    assert not bad, "name the parameter in backticks (`name`) instead of its flag:\n" + "\n".join(bad)


def test_the_scan_sees_a_flag_in_a_raise_a_default_and_a_constant_but_not_a_command_line():
    tree = ast.parse('FIX = "use another --out folder"\n'
                     'def f(x, flag="--device"):\n'
                     '    if x:\n'
                     '        raise ValueError(f"{x}: give --top between 1 and {x}; or run `mechscope zoo train --force`")\n'
                     '    raise ValueError(FIX)\n')
    texts = [t for _, t in _message_strings(tree) if FLAG.search(COMMAND_LINE.sub("", t))]
    assert sorted(texts) == ["--device", "use another --out folder", "{}: give --top between 1 and {}; or run `mechscope zoo train --force`"]
    assert not FLAG.search(COMMAND_LINE.sub("", "or run `mechscope zoo train --force`"))


def test_flag_names_translates_every_mechscope_error_not_only_usage_errors():
    with pytest.raises(MechscopeError, match=r"^--transcoders x: no such folder$"):
        with flag_names({"transcoders": "--transcoders"}):
            raise MechscopeError("`transcoders` x: no such folder")


def test_every_command_shows_the_flag_of_a_parameter_its_parser_sets(capsys):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--target-site")
    sub = p.add_subparsers(dest="action")
    sub.add_parser("go").add_argument("--top", "-t", type=int)
    assert parser_flags(p) == {"help": "--help", "target_site": "--target-site", "top": "--top"}
