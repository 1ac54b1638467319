"""Errors a user can cause and fix, as opposed to our bugs.

The ``mechscope`` command prints a :class:`MechscopeError` as one line, ``mechscope: error: <message>``,
and exits with its :attr:`~MechscopeError.exit_code` (2 for usage, 1 for failures); the traceback is
shown only under ``--debug``. Any other exception is a bug in mechscope and keeps its traceback.
Every message names the problem and, where there is one, the fix.
"""

from __future__ import annotations


class MechscopeError(Exception):
    """A failure the user can fix: a missing or corrupt file, a foreign file we do not understand, bad data."""

    exit_code = 1


class UsageError(MechscopeError, ValueError):
    """A flag or argument the command cannot accept (a bad value, a conflicting pair)."""

    exit_code = 2
