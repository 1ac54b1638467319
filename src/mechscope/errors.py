"""Errors a user can cause and fix, as opposed to our bugs.

The ``mechscope`` command prints a :class:`MechscopeError` as one line, ``mechscope: error: <message>``,
and exits with its :attr:`~MechscopeError.exit_code` (2 for usage, 1 for failures); the traceback is
shown only under ``--debug``. Any other exception is a bug in mechscope and keeps its traceback.
Every message names the problem and, where there is one, the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class MechscopeError(Exception):
    """A failure the user can fix: a missing or corrupt file, a foreign file we do not understand, bad data."""

    exit_code = 1


class UsageError(MechscopeError, ValueError):
    """A flag or argument the command cannot accept (a bad value, a conflicting pair)."""

    exit_code = 2


_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def flag_message(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each parameter written `name` (in backticks) that ``flags`` maps replaced by its flag.

    Library messages name Python parameters (`target_site`); a command, which knows its flags, shows
    ``--target-site`` instead. A name ``flags`` does not map is left as it is."""
    return _PARAMETER.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


@contextmanager
def flag_names(flags: Mapping[str, str]) -> Iterator[None]:
    """Inside, a :class:`MechscopeError` whose message names a parameter in ``flags`` is re-raised naming its flag."""
    try:
        yield
    except MechscopeError as err:
        if err.args and isinstance(err.args[0], str):
            err.args = (flag_message(err.args[0], flags), *err.args[1:])
        raise
