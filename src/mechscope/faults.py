"""Named fault points: places where a test can kill the process (``kill -9`` of itself) on purpose.

``MECHSCOPE_FAULT=<name>@<n>`` makes the n-th call (1-based) of :func:`point` with that name send
SIGKILL to the current process, exactly as an outside ``kill -9`` landing at that moment would. The
resume tests and ``scripts/kill_table.py`` use it to hit moments a timer rarely hits (between a
shard's rename and the manifest that lists it, inside an atomic write). Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "MECHSCOPE_FAULT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Count a pass through the fault point ``name``; kill the process if ``$MECHSCOPE_FAULT`` says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, nth = spec.partition("@")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
