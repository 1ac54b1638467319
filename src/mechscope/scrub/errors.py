"""The one error a bad hypothesis raises (a :class:`~mechscope.errors.UsageError`: one line, exit 2)."""

from mechscope.errors import UsageError


class HypothesisError(UsageError):
    """A hypothesis that cannot be evaluated: the message names the node and the fix."""
