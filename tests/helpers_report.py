"""What every written report must satisfy: one file that loads nothing from the network."""

from __future__ import annotations

import re

REMOTE = re.compile(r"""(?:src|href)\s*=\s*['"]?\s*(?:https?:)?//""", re.I)


def assert_offline(page: str) -> None:
    """No element of ``page`` loads anything from the network: no src/href to http(s):// or //host, no
    stylesheet link, no CSS import."""
    m = REMOTE.search(page)
    assert m is None, f"the report must need no network: {m.group(0)!r}"
    assert "<link" not in page and "@import" not in page and "url(http" not in page
