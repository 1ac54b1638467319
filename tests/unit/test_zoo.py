"""The zoo's pieces on tiny recipes: data known answers, per-head sites, the cache (strict, digest, retrain)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from mechscope.sites import capture, patch
from mechscope.zoo import (
    ZooCacheError,
    load_zoo,
    load_zoo_checkpoint,
    train_zoo,
    zoo_checkpoints,
)
from mechscope.zoo.induction import (
    InductionConfig,
    head_scores,
    pattern_scores,
    repeated_half_task,
    sample as induction_sample,
    splits,
)
from mechscope.zoo.modadd import ModAddConfig
from mechscope.zoo.parens import CLOSE, OPEN, SOURCES, ParensConfig, is_balanced, sample as parens_sample
from mechscope.zoo.recipe import checkpoint_steps
from mechscope.zoo.transformer import ZooTransformer

TINY = InductionConfig(
    vocab=8, n_ctx=12, min_seg=3, max_seg=5, n_train=256, n_val=64, d_model=16, steps=6, batch_size=16, checkpoints=3
)


def python_balanced(row: list[int]) -> bool:
    h = 0
    for t in row:
        h += (t == OPEN) - (t == CLOSE)
        if h < 0:
            return False
    return h == 0


def test_parens_labels_match_a_plain_loop_and_the_mix_is_hard():
    x = parens_sample(4000, 40, torch.Generator().manual_seed(0))
    y = is_balanced(x)
    assert [int(v) for v in y[:500]] == [python_balanced(r) for r in x[:500].tolist()]
    assert 0.25 <= float(y.float().mean()) <= 0.4
    e = ((x == OPEN).long() - (x == CLOSE).long()).cumsum(1)
    count_ok, horizon_ok = e[:, -1] == 0, e.min(1).values >= 0
    # Many unbalanced strings fail only one of the two tests (the hard cases of the write-up).
    assert float((count_ok & ~horizon_ok).float().mean()) > 0.15
    assert float((~count_ok & horizon_ok).float().mean()) > 0.15
    assert x.shape == (4000, 42) and bool((x[:, 0] == 1).all()) and bool((x[:, -1] == 0).all())
    assert len(SOURCES) == 4


def test_modadd_split_is_disjoint_and_complete():
    task = ModAddConfig(p=11).make_task()
    pairs = torch.cat([task.train_inputs, task.val_inputs])[:, :2]
    assert torch.unique(pairs[:, 0] * 11 + pairs[:, 1]).numel() == 121
    assert bool((task.train_targets == (task.train_inputs[:, 0] + task.train_inputs[:, 1]) % 11).all())
    assert task.train_inputs.shape[0] == round(0.5 * 121)


def test_induction_second_copy_repeats_the_first():
    cfg = InductionConfig()
    x, y, first, second = induction_sample(2000, cfg, torch.Generator().manual_seed(0))
    assert bool((y == x[:, 1:]).all())
    assert int((first & second).sum()) == 0 and bool((second.sum(1) == first.sum(1)).all())
    assert int(second.sum(1).min()) == cfg.min_seg - 1 and int(second.sum(1).max()) == cfg.max_seg - 1
    # Inside the second copy, the token after the previous occurrence of the current token is the target.
    from mechscope.scrub.features import FEATURES

    after = FEATURES["after_previous_occurrence"].fn(x, y)[:, :-1]
    agree = (after == y)[second].float().mean()
    assert float(agree) > 0.75  # not 1: the current token may also occur by chance after the first copy
    # Inside the segment every token is distinct (so the induction target within the copies is unique).
    a, L = first.float().argmax(1).long(), first.sum(1) + 1
    assert all(len(set(x[i, a[i] : a[i] + L[i]].tolist())) == int(L[i]) for i in range(500))
    assert not all(len(set(r)) == len(r) for r in x[:50].tolist())  # outside it tokens may repeat
    # The distance between the copies varies widely (no positional shortcut).
    starts_first, starts_second = first.float().argmax(1), second.float().argmax(1)
    assert torch.unique(starts_second - starts_first).numel() >= 20
    small = dataclasses.replace(cfg, n_train=100, n_val=50)
    task = repeated_half_task(small.make_task(), small)
    _, (xv, yv, _, sv) = splits(small)
    assert torch.equal(task.val_inputs, xv) and torch.equal(task.val_targets != -100, sv)
    assert torch.equal(task.val_targets[sv], yv[sv])


def test_head_scores_of_known_patterns():
    """A head that attends exactly to t − 1 scores 1 as a previous-token head and 0 as an induction head
    (the copies are ≥ 4 apart); one that attends exactly to the token after the previous occurrence scores
    1 as an induction head; the uniform causal pattern scores the mean of 1/(t + 1)."""
    cfg = InductionConfig()
    x, _, first, second = induction_sample(300, cfg, torch.Generator().manual_seed(1))
    N, T = x.shape
    prev = torch.zeros(N, T, T)
    prev[:, 0, 0] = 1
    prev[:, torch.arange(1, T), torch.arange(T - 1)] = 1
    assert pattern_scores(prev, first, second) == pytest.approx((1.0, 0.0))
    ind = torch.eye(T).expand(N, T, T).clone()
    d = second.float().argmax(1) - first.float().argmax(1)
    for i in range(N):
        for t in second[i].nonzero().flatten().tolist():
            ind[i, t] = 0
            ind[i, t, t - int(d[i]) + 1] = 1
    p_score, i_score = pattern_scores(ind, first, second)
    assert i_score == pytest.approx(1.0) and p_score < 0.5
    uniform = torch.ones(T, T).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(N, T, T)
    want_prev = float(sum(1 / (t + 1) for t in range(1, T)) / (T - 1))
    assert pattern_scores(uniform, first, second)[0] == pytest.approx(want_prev, rel=1e-5)
    # On a model: one score of each kind per head, all in [0, 1].
    torch.manual_seed(0)
    scores = head_scores(ZooTransformer(cfg.shape()).eval(), cfg, n=50)
    assert len(scores) == 2 * cfg.n_layers * cfg.n_heads and all(0 <= v <= 1 for v in scores.values())
    assert {"prev_token_score.L0H1", "induction_score.L1H0"} <= set(scores)


def test_checkpoint_steps_are_log_spaced_and_end_at_the_last():
    s = checkpoint_steps(1200, 24)
    assert len(s) >= 24 and s[-1] == 1200 and s == sorted(set(s)) and s[0] == 1
    assert s[1] / s[0] >= s[-1] / s[-2]  # log spacing: dense early, sparse late


def test_head_sites_add_up_to_the_attention_output():
    """Σ_h result_h + b_O equals the attention module's output (a known identity of the architecture),
    and zeroing one head's z changes the logits."""
    torch.manual_seed(0)
    cfg = InductionConfig()
    m = ZooTransformer(cfg.shape()).eval()
    x = torch.randint(0, cfg.vocab, (4, cfg.n_ctx))
    sites = [
        "blocks.1.attn",
        "blocks.1.attn.heads.0.result",
        "blocks.1.attn.heads.1.result",
        "blocks.1.attn.heads.0.pattern",
    ]
    with torch.no_grad(), capture(m, sites) as a:
        clean = m(x)
    total = a["blocks.1.attn.heads.0.result"] + a["blocks.1.attn.heads.1.result"] + m.blocks[1].attn.b_O
    assert torch.allclose(total, a["blocks.1.attn"], atol=1e-5)
    assert torch.allclose(a["blocks.1.attn.heads.0.pattern"].sum(-1), torch.ones(4, cfg.n_ctx), atol=1e-5)
    assert bool((a["blocks.1.attn.heads.0.pattern"].triu(1) == 0).all())  # causal
    with torch.no_grad(), patch(m, "blocks.1.attn.heads.0.z", "zero"):
        ablated = m(x)
    assert not torch.allclose(clean, ablated)


def test_cache_trains_once_loads_strictly_and_retrains_on_a_changed_recipe(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    a = train_zoo("induction", TINY, progress=False)
    b = load_zoo("induction", TINY)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    steps = [s for s, _ in zoo_checkpoints("induction", TINY)]
    assert steps == checkpoint_steps(TINY.steps, TINY.checkpoints) and steps[-1] == TINY.steps
    final = load_zoo_checkpoint("induction", TINY.steps, TINY)
    assert torch.equal(final.W_E, b.model.W_E)
    # Deterministic: retraining the same recipe gives the same weights.
    again = train_zoo("induction", TINY, force=True, progress=False)
    assert torch.equal(again.model.W_E, a.model.W_E)
    # A changed recipe retrains; loading the old checkpoints under the new recipe is refused.
    other = dataclasses.replace(TINY, seed=1)
    c = load_zoo("induction", other)
    assert not torch.equal(c.model.W_E, a.model.W_E)
    with pytest.raises(Exception, match="no checkpoint at step 999"):
        load_zoo_checkpoint("induction", 999, other)


def test_corrupt_or_foreign_cache_is_refused(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    train_zoo("induction", TINY, progress=False)
    path = tmp_path / "zoo" / "induction" / "model.safetensors"
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mechscope.cache import save_tensors
    from mechscope.digest import DIGEST_KEY

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["extra"] = torch.zeros(1)
    save_tensors(path, tensors, {k: v for k, v in meta.items() if k != DIGEST_KEY})  # a valid digest, a foreign tensor
    with pytest.raises(ZooCacheError, match=r"unknown tensors \['extra'\].*mechscope zoo train induction --force"):
        load_zoo("induction", TINY)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ZooCacheError, match="not a readable safetensors file"):
        load_zoo("induction", TINY)


def _flip(path, offset: int = 3, bit: int = 0x40) -> None:
    """Flip one bit of the tensors' bytes of a safetensors file (byte 3 of a float32: an exponent bit)."""
    data = bytearray(path.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + offset] ^= bit
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_zoo_cache_is_refused_on_load_and_trained_again_by_zoo_train(
    tmp_path, monkeypatch, capsys, one_thread
):
    from mechscope.cli import main
    from mechscope.zoo import ZOO

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    monkeypatch.setitem(ZOO, "induction", TINY)  # the CLI's recipe, tiny
    trained = train_zoo("induction", progress=False)
    folder = tmp_path / "zoo" / "induction"
    _flip(folder / "model.safetensors", offset=1, bit=0x01)  # a low mantissa bit
    with pytest.raises(
        ZooCacheError, match=r"model\.safetensors: tensor digest mismatch.*`mechscope zoo train induction --force`"
    ):
        load_zoo("induction")
    _flip(folder / "checkpoints" / f"step_{TINY.steps:07d}.safetensors")
    with pytest.raises(ZooCacheError, match="tensor digest mismatch"):
        load_zoo_checkpoint("induction", TINY.steps)
    assert main(["zoo", "list", "--json"]) == 1  # the whole listing, then one line: a damaged cache does not exit 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("mechscope: error: ") and "model.safetensors" in err
    (entry,) = [e for e in json.loads(out)["models"] if e["name"] == "induction"]
    assert (
        entry["state"] == "damaged"
        and not entry["trained"]
        and entry["metrics"] == {}
        and "digest mismatch" in entry["problem"]
    )
    # `zoo train` (no --force) used to answer "trained": true with the stale metrics; it trains again and says so
    assert main(["zoo", "train", "induction", "--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert (
        res["trained"] and res["trained_now"] and "digest mismatch" in res["damaged_before"] and res["problem"] is None
    )
    assert "note: the cached model is damaged, training it again" in err
    again = load_zoo("induction")  # the same recipe, the same weights as the first training
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in trained.model.state_dict().items())
    assert again.metrics == trained.metrics


def test_edited_metrics_are_refused_and_a_killed_trainings_folder_is_removed(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    train_zoo("induction", TINY, progress=False)
    recipe = tmp_path / "zoo" / "induction" / "recipe.json"
    rec = json.loads(recipe.read_text())
    rec["metrics"]["val_accuracy"] = 0.999
    recipe.write_text(json.dumps(rec))
    with pytest.raises(ZooCacheError, match=r"recipe\.json: history or metrics differ.*--force"):
        load_zoo("induction", TINY)
    stale = tmp_path / "zoo" / ".induction.k2j4x"  # what tempfile.mkdtemp leaves when a training is killed
    (stale / "checkpoints").mkdir(parents=True)
    train_zoo("induction", TINY, progress=False)  # the damaged record is trained again, under the lock
    assert not stale.exists() and load_zoo("induction", TINY).metrics["val_accuracy"] != 0.999


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda rec: rec.update(confix=rec.pop("config")),
            r"recipe\.json: keys .*confix.* are not those mechscope writes",
        ),
        (
            lambda rec: rec["config"].update(batch_size=rec["config"]["batch_size"] + 1),
            r"recipe\.json: its format, name, config",
        ),
        (lambda rec: rec.update(name="parens"), r"recipe\.json: its format, name, config"),
        (lambda rec: rec.update(extra=1), r"recipe\.json: keys .*extra"),
    ],
)
def test_every_field_of_recipe_json_is_checked(tmp_path, monkeypatch, capsys, one_thread, edit, match):
    """A renamed key or a changed digit in recipe.json's config used to load silently (the campaign of issue 24)."""
    from mechscope.cli import main

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    train_zoo("induction", TINY, progress=False)
    recipe = tmp_path / "zoo" / "induction" / "recipe.json"
    rec = json.loads(recipe.read_text())
    edit(rec)
    recipe.write_text(json.dumps(rec))
    with pytest.raises(ZooCacheError, match=match + r".*`mechscope zoo train induction --force`"):
        load_zoo("induction", TINY)
    from mechscope.zoo import ZOO

    monkeypatch.setitem(ZOO, "induction", TINY)  # the CLI's recipe, tiny
    assert main(["zoo", "list"]) == 1
    assert re.search(match, capsys.readouterr().err.strip().splitlines()[-1])


def test_bad_recipe_values_are_usage_errors():
    from mechscope.errors import UsageError

    with pytest.raises(UsageError, match="steps must be ≥ 1"):
        ParensConfig(steps=0)
    with pytest.raises(UsageError, match="2 · max_seg ≤ n_ctx"):
        InductionConfig(n_ctx=30)
    with pytest.raises(UsageError, match="unknown zoo model 'nope'"):
        load_zoo("nope")


def test_a_checkpoint_under_another_steps_name_is_refused(tmp_path, monkeypatch, one_thread):
    import shutil

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    (first, a), (_, b) = zoo_checkpoints("induction", TINY)[:2]
    shutil.copyfile(a, b)  # its own digest is intact: only the recorded step tells
    with pytest.raises(ZooCacheError, match=rf"written for another step \('{first}'.*--force"):
        load_zoo_checkpoint("induction", int(b.stem.split("_")[1]), TINY)
