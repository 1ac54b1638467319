"""Token contexts: fixed length, BOS handling, deterministic shuffle, and a disjoint validation split."""

from __future__ import annotations

import pytest

from mechscope.data.text import TextCorpusConfig, build_contexts

from mechscope.testing import SMALL_TEXT


def test_contexts_shape_bos_and_determinism(smollm2):
    tok = smollm2.tokenizer
    cfg = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
    a, b = build_contexts(tok, cfg), build_contexts(tok, cfg)
    assert a.train.shape[1] == 32 and a.val.shape[1] == 32 and len(a.train) > 50 and len(a.val) > 3
    assert (a.train[:, 0] == tok.bos_token_id).all()
    assert a.train.equal(b.train) and a.val.equal(b.val)
    c = build_contexts(tok, TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1, seed=1))
    assert not c.train.equal(a.train) and sorted(map(tuple, c.train.tolist())) == sorted(map(tuple, a.train.tolist()))
    assert (build_contexts(tok, TextCorpusConfig(source=SMALL_TEXT, context_length=32, bos="never")).train[:, 0]
            != tok.bos_token_id).any()


def test_validation_never_in_training(smollm2):
    ctx = build_contexts(smollm2.tokenizer, TextCorpusConfig(source="stdlib", context_length=64, max_tokens=200_000))
    train = {tuple(r) for r in ctx.train[:, 1:].tolist()}
    val = [tuple(r) for r in ctx.val[:, 1:].tolist()]
    assert len(val) > 20 and not any(v in train for v in val)
    # Stronger: no 16-token window of a validation context appears anywhere in training.
    windows = {t[i:i + 16] for t in train for i in range(0, len(t) - 15)}
    hits = sum(v[i:i + 16] in windows for v in val for i in range(0, len(v) - 15, 16))
    assert hits / (len(val) * 3) < 0.05


def test_bad_source_is_clear(smollm2):
    with pytest.raises(FileNotFoundError, match="not 'stdlib'"):
        build_contexts(smollm2.tokenizer, TextCorpusConfig(source="/nonexistent/*.txt"))
