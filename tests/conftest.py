"""Shared fixtures: a tiny tokenizer built here (no model needed), tiny random Llamas saved as local HF folders
(one over the tiny tokenizer, for unit tests; one over the real SmolLM2 tokenizer, for tests whose prompts or
token counts are SmolLM2's), and the real SmolLM2 (session-scoped; converted once into the cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from mechscope.cache import WAITS_LOG

_WARM: dict[str, object] = {}
SLOW_FOLDERS = ("tests/e2e/", "tests/integration/")
"""Every test under these is ``slow``: they run the real command line in subprocesses, load the embedded models or
train the zoo's. Unit tests that take more than a few seconds carry the mark themselves."""


RUN_ORDER = ("tests/unit/", "tests/integration/", "tests/e2e/")
"""Folders in the order they run. The unit tests go first: they need little of the model cache, so they run on one
core while tests/warm_cache.py trains the zoo's models on the other, and the tests that need those models come after."""


FIXTURE_NEEDS = {
    "tiny_lm_dir": "smollm2",  # its tokenizer is read from the converted SmolLM2
    "tiny_lm": "smollm2",
    "smollm2": "smollm2",
    "zoo_modadd": "modadd",
    "zoo_parens": "parens",
    "zoo_induction": "induction",
    "gemma3": "gemma3-270m",  # tests/integration/test_gemma3.py's module fixture
}
"""The cache entry (a name in tests/warm_cache.py's STEPS) each of these fixtures waits for while the warm cache
writes it."""


def _folder_rank(item: pytest.Item) -> int:
    return next((i for i, folder in enumerate(RUN_ORDER) if item.nodeid.startswith(folder)), len(RUN_ORDER))


def _module_ranks(items: list[pytest.Item]) -> dict[str, int]:
    """For each test module, the position in the warm cache's STEPS of the last entry any of its tests needs
    (through :data:`FIXTURE_NEEDS`; -1 for none). Whole modules move, so module-scoped fixtures are built once."""
    from tests.warm_cache import STEPS

    position = {name: i for i, (_, name) in enumerate(STEPS)}
    ranks: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        needs = [position[FIXTURE_NEEDS[f]] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_NEEDS]
        ranks[module] = max([ranks.get(module, -1), *needs])
    return ranks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests by :data:`RUN_ORDER`, then within a folder by the warm cache's order of the entries their
    modules need (stable otherwise): a test that needs an entry while tests/warm_cache.py still writes it blocks on
    the entry's lock and leaves its core idle, so the modules that need nothing run first, then those
    that need SmolLM2, then the zoo's models in the order they are trained, then Gemma 3. Mark the tests under
    :data:`SLOW_FOLDERS` ``slow``, so that ``-m "not slow"`` (``make test-fast``) leaves them out."""
    ranks = _module_ranks(items)
    items.sort(key=lambda item: (_folder_rank(item), ranks[item.nodeid.split("::")[0]]))
    for item in items:
        if item.nodeid.startswith(SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start tests/warm_cache.py beside the tests when they include end-to-end or integration tests (those need
    the zoo's trained models and the embedded models); ``MECHSCOPE_WARM_CACHE=0`` turns it off."""
    if os.environ.get("MECHSCOPE_WARM_CACHE", "1") == "0" or os.environ.get("PYTEST_XDIST_WORKER") or _WARM:
        return
    if not any(item.nodeid.startswith(("tests/e2e/", "tests/integration/")) for item in session.items):
        return
    log = Path(tempfile.gettempdir()) / f"mechscope-warm-cache-{os.getpid()}.log"
    waits = log.with_suffix(".waits")
    waits.write_text("")
    os.environ[WAITS_LOG] = str(waits)  # the tests, their subprocesses and the warm cache log their lock waits
    out = open(log, "w")
    _WARM.update(
        log=log,
        waits=waits,
        out=out,
        proc=subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("warm_cache.py"))], stdout=out, stderr=subprocess.STDOUT
        ),
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the background filler if it still runs (a killed writer leaves only temporaries, removed by the next
    writer of that entry) and say how it ended."""
    proc = _WARM.get("proc")
    if not isinstance(proc, subprocess.Popen):
        return
    if proc.poll() is None:
        proc.terminate()
    rc = proc.wait()
    _WARM["out"].close()  # type: ignore[union-attr]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("-", "warm cache")
        lines = Path(_WARM["log"]).read_text().splitlines()  # type: ignore[arg-type]
        ended = "stopped when the tests ended" if rc == -15 else f"exit {rc}"
        reporter.write_line(
            f"warm cache (tests/warm_cache.py): {ended}; "
            + (
                "; ".join(line.removeprefix("warm-cache: ") for line in lines if line.startswith("warm-cache:"))
                or "nothing done"
            )
        )
        reporter.write_line(_waits(Path(_WARM["waits"]), proc.pid))  # type: ignore[arg-type]


def _waits(log: Path, warm_pid: int) -> str:
    """One line: each wait for a cache entry's lock (:data:`mechscope.cache.WAITS_LOG`) of a second or more, by the
    tests or by the warm cache, longest first."""
    rows = []
    for line in log.read_text().splitlines():
        seconds, entry, pid = line.split("\t")
        if float(seconds) >= 1.0:
            who = "warm cache" if int(pid) == warm_pid else "tests"
            rows.append((float(seconds), f"{who} waited {float(seconds):.0f} s for {Path(entry).name}"))
    if not rows:
        return "lock waits: none of a second or more"
    return f"lock waits ({sum(s for s, _ in rows):.0f} s in all): " + "; ".join(
        text for _, text in sorted(rows, reverse=True)
    )


@pytest.fixture(scope="session")
def smollm2():
    from mechscope.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer of 4096 tokens (special tokens as SmolLM2's: BOS ``<|im_start|>``, EOS and pad
    ``<|im_end|>``), trained here in well under a second on the email package's sources plus one line of the
    English words the unit tests' prompts use (so that each is one token, as in SmolLM2's tokenizer). Deterministic."""
    import glob

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.harness import SMALL_TEXT

    texts = [Path(p).read_text() for p in sorted(glob.glob(SMALL_TEXT))]
    texts += ["When Mary and John went out, John gave it to him. Anna Tom Paul Kate Mark Lisa"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=4096,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )


def _tiny_llama_dir(folder: Path, tokenizer) -> Path:
    """A 3-layer random LlamaForCausalLM over ``tokenizer``'s vocabulary (width 64), saved with it in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tok_lm_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random Llama over :func:`tiny_tokenizer`, as a local HF folder: what unit tests load."""
    return _tiny_llama_dir(tmp_path_factory.mktemp("tiny-tok-llama"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_tok_lm(tiny_tok_lm_dir):
    from mechscope.models import load_model

    return load_model(str(tiny_tok_lm_dir))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama over SmolLM2's vocabulary, saved with its tokenizer (read from the converted copy;
    the 135M model itself is not loaded)."""
    from transformers import AutoTokenizer

    from mechscope.models.embedded import SMOLLM2, ensure_converted

    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(SMOLLM2), local_files_only=True)
    return _tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from mechscope.models import load_model

    return load_model(str(tiny_lm_dir))


def _zoo(name: str):
    from mechscope.zoo import load_zoo

    return load_zoo(name)  # trains once per machine (cached), on one thread


@pytest.fixture(scope="session")
def zoo_parens():
    """The zoo's balanced-parentheses classifier (mechscope.zoo.ZooModel)."""
    return _zoo("parens")


@pytest.fixture(scope="session")
def zoo_modadd():
    """The zoo's grokked modular-addition model, with checkpoints along training."""
    return _zoo("modadd")


@pytest.fixture(scope="session")
def zoo_induction():
    """The zoo's two-layer attention-only induction model."""
    return _zoo("induction")


@pytest.fixture
def one_thread():
    """Run a test single-threaded (small batched kernels are faster and steadier so), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
