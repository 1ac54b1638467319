"""Fill the model cache in the background while the first tests run (started by tests/conftest.py).

The zoo's models train on one thread, so while a test waits for one the second core would idle; here they train
beside the tests instead. Every entry is written under the cache's lock, so a test that needs an entry still being
written blocks until it is complete, then reads it; nothing here changes what any test sees. A step that fails is
reported on stderr and left to the test that needs it, which then fails on its own.
"""

from __future__ import annotations

import sys
import time
import traceback


def _zoo(name: str) -> None:
    from mechscope.zoo import train_zoo

    train_zoo(name, progress=False)


def _embedded(name: str) -> None:
    from mechscope.models.embedded import EMBEDDED, ensure_converted

    ensure_converted(EMBEDDED[name])


def _anomaly(name: str) -> None:
    from mechscope.anomaly.benchmarks import load_benchmark

    load_benchmark(name)


# The order of the entries is the order the tests run in (tests/conftest.py: unit, integration, e2e, and within a
# folder the modules that need none of these first, then by the position here of the last entry they need,
# through conftest.FIXTURE_NEEDS). SmolLM2 first: the tiny Llamas read its tokenizer.
STEPS = [
    (_embedded, "smollm2"),
    (_zoo, "modadd"),
    (_zoo, "parens"),
    (_zoo, "induction"),
    (_embedded, "gemma3-270m"),
    *((_anomaly, t) for t in ("backdoor-corner", "backdoor-lm", "backdoor-blend", "ood")),
]


def main() -> int:
    failed = 0
    for step, name in STEPS:
        start = time.time()
        try:
            step(name)
            print(f"warm-cache: {step.__name__[1:]} {name} ready after {time.time() - start:.0f} s", flush=True)
        except Exception:  # the test that needs this entry builds it again and fails visibly if it cannot
            failed += 1
            print(
                f"warm-cache: {step.__name__[1:]} {name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
