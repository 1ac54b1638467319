"""The explain run on a planted dictionary: each latent's explanation comes from its own evidence, results are saved
per batch, a crash loses at most the batch in flight and a second run carries on, other settings are refused."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from mechscope.errors import UsageError
from mechscope.explain.evidence import EvidenceConfig, EvidenceSource
from mechscope.explain.explainers import ExplainerConfig
from mechscope.explain.run import FILE, ExplainConfig, read_explanations, run_explain
from tests.helpers_explain import V, name, planted_sae, planted_store

ECFG = EvidenceConfig(top=4, quantiles=2, per_quantile=2, negatives=4, before=2, after=1, batch_size=64)
XCFG = ExplainerConfig(examples=3)


class MarkReader:
    """A Writer that answers with the first marked token of each prompt's examples:
    the right explanation of a planted latent, if the prompt marks its evidence right. ``fail_on_call`` raises on
    that call (0-based), as a crash would."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def write(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("the writer died")
        self.calls.append(prompts)
        out = []
        for p in prompts:
            real = p.split("in these snippets:")[1]
            out.append(f"Explanation: the token {re.search(r'<<(.*?)>>', real).group(1)}. And more words.")
        return out


@dataclass(frozen=True)
class FakeScore:
    latent: int
    beats_random: bool
    others: tuple[str, ...]

    def to_json(self) -> dict:
        return {"latent": self.latent, "others": list(self.others)}


def fake_score(ev, text, others, judge, rng):
    assert judge == "judge" and text not in others and others
    return FakeScore(ev.latent, ev.latent % 2 == 0, tuple(others))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    store, _, _ = planted_store(tmp_path_factory.mktemp("store"))
    return EvidenceSource(planted_sae(dead=2), store, "resid_post.0", name, ECFG)


def test_each_latent_is_explained_from_its_own_evidence_and_scored(source, tmp_path):
    cfg = ExplainConfig(count=6, batch_latents=4, progress=False)
    out = run_explain(source, MarkReader(), tmp_path, cfg, XCFG, judge="judge", score=fake_score)
    saved = json.loads((tmp_path / FILE).read_text())
    assert saved["complete"] and len(saved["latents"]) == 6 and out.done == out.explained_now == 6
    assert all(i < V for i in saved["latents"])  # drawn from the latents that fired: never the two dead ones
    for r in saved["results"]:
        assert r["explanation"] == f"the token {name(r['latent'])}."
        assert r["evidence"] == {"top": 4, "quantiles": 4, "negatives": 4}
        assert r["beats_random"] == (r["latent"] % 2 == 0)
    # the random explanation is drawn from other latents' explanations, those written so far
    last = saved["results"][-1]
    assert len(last["scores"]["others"]) == 5
    assert out.scored == 6 and out.beats_random == sum(i % 2 == 0 for i in saved["latents"])
    assert read_explanations(tmp_path)[last["latent"]] == last


def test_a_crash_loses_one_batch_and_the_next_run_carries_on(source, tmp_path):
    cfg = ExplainConfig(count=6, batch_latents=2, score=False, progress=False)
    with pytest.raises(RuntimeError, match="died"):
        run_explain(source, MarkReader(fail_on_call=1), tmp_path, cfg, XCFG)
    saved = json.loads((tmp_path / FILE).read_text())
    assert not saved["complete"] and len(saved["results"]) == 2
    again = MarkReader()
    out = run_explain(source, again, tmp_path, cfg, XCFG)
    assert sum(len(c) for c in again.calls) == 4 and out.explained_now == 4 and out.done == 6
    final = json.loads((tmp_path / FILE).read_text())
    assert final["complete"] and final["results"][:2] == saved["results"]
    assert [r["latent"] for r in final["results"]] == final["latents"]
    # a third run has nothing left to do
    idle = MarkReader()
    assert run_explain(source, idle, tmp_path, cfg, XCFG).explained_now == 0 and not idle.calls


def test_settings_with_a_tuple_of_sites_resume(source, tmp_path):
    cfg = ExplainConfig(count=2, score=False, progress=False)
    settings = {"site": ("mlp_in.0", "mlp_in.1")}
    run_explain(source, MarkReader(), tmp_path, cfg, XCFG, settings=settings)
    assert run_explain(source, MarkReader(), tmp_path, cfg, XCFG, settings=settings).explained_now == 0


def test_other_settings_are_refused_rather_than_mixed(source, tmp_path):
    cfg = ExplainConfig(count=2, score=False, progress=False)
    run_explain(source, MarkReader(), tmp_path, cfg, XCFG)
    with pytest.raises(UsageError, match=r"other settings \(explainer\.examples\)"):
        run_explain(source, MarkReader(), tmp_path, cfg, ExplainerConfig(examples=2))
    with pytest.raises(UsageError, match=r"\(explain\.count, explain\.latents\)"):
        run_explain(source, MarkReader(), tmp_path, ExplainConfig(latents=(1, 2), score=False), XCFG)


def test_dead_and_chosen_latents(source, tmp_path):
    cfg = ExplainConfig(latents=(3, V + 1), score=False, progress=False)
    run_explain(source, MarkReader(), tmp_path, cfg, XCFG)
    got = read_explanations(tmp_path)
    assert got[3]["explanation"] == f"the token {name(3)}."
    assert got[V + 1]["explanation"] == "" and "never fired" in got[V + 1]["note"]
    with pytest.raises(UsageError, match=r"`latents` \[99\] out of range"):
        run_explain(source, MarkReader(), tmp_path / "x", ExplainConfig(latents=(99,), score=False), XCFG)
    with pytest.raises(UsageError, match="needs a judge"):
        run_explain(source, MarkReader(), tmp_path / "y", ExplainConfig(count=2), XCFG)


def test_a_foreign_explanations_file_is_named(tmp_path):
    from mechscope.errors import MechscopeError

    (tmp_path / FILE).write_text('{"format": "something-else"}')
    with pytest.raises(MechscopeError, match="not a mechscope explanations file"):
        read_explanations(tmp_path)
