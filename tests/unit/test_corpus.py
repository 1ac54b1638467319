"""Token contexts: fixed length, BOS handling, deterministic shuffle, and a disjoint validation split."""

from __future__ import annotations

import pytest

from mechscope.data.text import TextCorpusConfig, build_contexts
from tests.harness import SMALL_TEXT


def test_contexts_shape_bos_and_determinism(tiny_tokenizer):
    tok = tiny_tokenizer
    cfg = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
    a, b = build_contexts(tok, cfg), build_contexts(tok, cfg)
    assert a.train.shape[1] == 32 and a.val.shape[1] == 32 and len(a.train) > 50 and len(a.val) > 3
    assert (a.train[:, 0] == tok.bos_token_id).all()
    assert a.train.equal(b.train) and a.val.equal(b.val)
    c = build_contexts(tok, TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1, seed=1))
    assert not c.train.equal(a.train) and sorted(map(tuple, c.train.tolist())) == sorted(map(tuple, a.train.tolist()))
    assert (
        build_contexts(tok, TextCorpusConfig(source=SMALL_TEXT, context_length=32, bos="never")).train[:, 0]
        != tok.bos_token_id
    ).any()


def test_validation_never_in_training(tiny_tokenizer):
    ctx = build_contexts(tiny_tokenizer, TextCorpusConfig(source="stdlib", context_length=64, max_tokens=200_000))
    train = {tuple(r) for r in ctx.train[:, 1:].tolist()}
    val = [tuple(r) for r in ctx.val[:, 1:].tolist()]
    assert len(val) > 20 and not any(v in train for v in val)
    # Stronger: (almost) no 16-token window of a validation context appears anywhere in training. Before
    # near-duplicate documents were clustered, 1.9% of them did (2.2% at stride 16; 3.7% at the demo's T=128).
    windows = {t[i : i + 16] for t in train for i in range(0, len(t) - 15)}
    hits = sum(v[i : i + 16] in windows for v in val for i in range(0, len(v) - 15))
    assert hits / (len(val) * (len(val[0]) - 15)) < 0.001
    # The split keeps its size: clusters are sent to validation with probability val_fraction whatever their size.
    assert 0.03 < len(ctx.val) / (len(ctx.val) + len(ctx.train)) < 0.08


def test_near_duplicates_cluster_by_shared_runs():
    from mechscope.data.text import near_duplicate_clusters, select_documents

    run = list(range(100, 116))  # 16 tokens
    docs = [
        [1, 2, 3] + run + [4],  # 0 shares `run` with 1
        [9] + run,  # 1 shares `run` with 0 and its tail with 2
        run[1:] + [7, 7, 7] + list(range(200, 216)),  # 2 shares only 15 tokens of `run` with 0 and 1
        list(range(300, 340)),  # 3 shares nothing
        [5, 6],  # 4 is too short to share a run
        list(range(220, 230)) + list(range(200, 216)),  # 5 shares range(200, 216) with 2
    ]
    assert near_duplicate_clusters(docs, 16) == [0, 0, 2, 3, 4, 2]
    assert near_duplicate_clusters(docs, 15) == [0, 0, 0, 3, 4, 0]  # run[1:] is a shared 15-run: 2 joins 0 and 1
    texts = ["Hello   World\n", "hello world", "other text"]
    kept = select_documents(lambda: texts, _SelfBosTokenizer(), 10**6)
    assert len(kept.docs) == 2 and _SelfBosTokenizer()("other text", add_special_tokens=False).input_ids in kept.docs


def test_bad_source_is_clear(tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="not 'stdlib'"):
        build_contexts(tiny_tokenizer, TextCorpusConfig(source="/nonexistent/*.txt"))


class _SelfBosTokenizer:
    """A tokenizer that, like Gemma's, adds BOS itself unless told not to (ids: one per character)."""

    bos_token_id, eos_token_id = 2, 1

    def __call__(self, text, add_special_tokens=True):
        class Out:
            pass

        out = Out()
        out.input_ids = ([self.bos_token_id] if add_special_tokens else []) + [10 + ord(c) % 200 for c in text]
        return out


def test_auto_bos_also_for_tokenizers_that_add_it_themselves():
    """Documents are tokenised without special tokens, so ``auto`` must prepend BOS for such a tokenizer
    too (it once left it out, and Gemma 3 read every context without its BOS)."""
    ctx = build_contexts(
        _SelfBosTokenizer(), TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.3, dedup_ngram=0)
    )
    assert (ctx.train[:, 0] == 2).all() and (ctx.val[:, 0] == 2).all()
    assert not (ctx.train[:, 1:] == 2).any()
