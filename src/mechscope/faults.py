"""Named fault points: places where a test can kill the process (``kill -9`` of itself) on purpose.

``MECHSCOPE_FAULT=<name>@<n>`` makes the n-th call (1-based) of :func:`point` with that name send
SIGKILL to the current process, exactly as an outside ``kill -9`` landing at that moment would. The
resume tests and ``scripts/kill_table.py`` use it to hit moments a timer rarely hits (between a
shard's rename and the manifest that lists it, inside an atomic write). Unset, a point costs one
dictionary lookup.

Words after the point, separated by spaces, narrow or change it for a torchrun job: ``rank=R`` acts only
in the process whose caller passes ``rank=R`` (the other ranks run on), and ``hang`` makes the process
sleep forever instead of dying, as a stuck rank would (``MECHSCOPE_FAULT="harvest.manifest_written@1 rank=1 hang"``).
"""

from __future__ import annotations

import os
import signal
import time

ENV = "MECHSCOPE_FAULT"
_hits: dict[str, int] = {}


def point(name: str, rank: int = 0) -> None:
    """Count a pass through the fault point ``name`` (by the process of rank ``rank``); kill the process, or
    hang it, if ``$MECHSCOPE_FAULT`` says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, *words = spec.split()
    want, _, nth = where.partition("@")
    if want != name or any(w.startswith("rank=") and int(w.removeprefix("rank=")) != rank for w in words):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        if "hang" in words:
            while True:
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)
