"""The explainers' pieces: marking, the prompt, the answer kept, the registry, and the local writer's batched,
left-padded greedy generation (the same answers as one prompt at a time)."""

from __future__ import annotations

import pytest

from mechscope.explain.endpoint import Endpoint
from mechscope.explain.explainers import (
    WRITERS,
    ExplainerConfig,
    HFWriter,
    explain,
    explanation_prompt,
    first_sentence,
    make_writer,
    marked,
    marked_tokens,
)
from mechscope.explain.types import Evidence, Example


def test_marking_brackets_runs_of_tokens_above_the_fraction():
    ex = Example(("a", " b", " c", " d", "\n", "e"), (0.0, 1.0, 0.9, 0.1, 0.0, 0.5))
    assert marked(ex, 0.25) == "a<< b c>> d\\n<<e>>"
    assert marked(ex, 0.95) == "a<< b>> c d\\ne"
    assert marked(Example(("x",), (0.0,)), 0.25) == "x"


def test_prompt_shows_top_windows_then_strongest_quantile_samples():
    top = tuple(Example((f"t{i}",), (1.0,)) for i in range(2))
    quant = tuple(Example((f"q{i}",), (float(i + 1),)) for i in range(3))
    p = explanation_prompt(Evidence(5, top, quant, ()), ExplainerConfig(examples=4))
    real = p.split("in these snippets:")[1]
    assert "Example 1: <<t0>>" in real and "Example 3: <<q2>>" in real and "Example 4: <<q1>>" in real
    assert "q0" not in real and "Example 5" not in real
    assert "Most common marked tokens: 't0' (1), 't1' (1), 'q2' (1), 'q1' (1)\nIn a few words" in real


def test_marked_tokens_are_counted_without_case_or_spaces():
    exs = [Example((" The", " cat", "\n "), (2.0, 0.1, 2.0)), Example(("the", "\n "), (1.0, 1.0))]
    assert marked_tokens(exs, 0.25) == [("the", 2), ("\\n ", 2)]


@pytest.mark.parametrize(
    "answer,kept",
    [
        ("Explanation: the word 'the'. It is common.", "the word 'the'."),
        ('\n\n  "Opening parentheses in code."\nmore', "Opening parentheses in code."),
        ("1. Description: numbers at the start of a line", "numbers at the start of a line"),
        ("", ""),
        (
            'The feature detects the following:\n\n- "containing" (5)\n- "contains" (3)\n- "containing" (5)\n- a\n- b',
            'The feature detects the following: "containing" (5), "contains" (3), a',
        ),
        ("Detects the following:\n- Detects the following:\n1. x\n- Detects the follow", "Detects the following: x"),
    ],
)
def test_the_first_sentence_is_kept(answer, kept):
    assert first_sentence(answer) == kept


def test_registry_and_endpoint_needs_its_url():
    assert set(WRITERS) == {"hf", "endpoint"}
    with pytest.raises(ValueError, match="needs `endpoint`"):
        ExplainerConfig(explainer="endpoint", endpoint_model="m")
    with pytest.raises(ValueError, match="`endpoint_model`"):
        ExplainerConfig(explainer="endpoint", endpoint="http://127.0.0.1:9")
    assert isinstance(
        make_writer(ExplainerConfig(explainer="endpoint", endpoint="http://h:1", endpoint_model="m")), Endpoint
    )
    with pytest.raises(ValueError, match="mark_fraction"):
        ExplainerConfig(mark_fraction=0.0)


def test_local_writer_batches_with_left_padding_as_one_at_a_time(tiny_tok_lm):
    prompts = ["a short one", "a much longer prompt than the first, with many more words in it", "mid length text"]
    batched = HFWriter(tiny_tok_lm, batch=3).write(prompts, 6)
    single = [HFWriter(tiny_tok_lm, batch=1).write([p], 6)[0] for p in prompts]
    assert batched == single and len(batched) == 3
    assert tiny_tok_lm.tokenizer.padding_side == "right"  # restored


class Echo:
    def write(self, prompts, max_new_tokens):
        return [f"Answer: n{len(p)}. extra" for p in prompts][:-1]


def test_explain_refuses_a_writer_that_drops_answers():
    ev = Evidence(0, (Example(("x",), (1.0,)),), (), ())
    with pytest.raises(RuntimeError, match="1 answers to 2"):
        explain(Echo(), [ev, ev], ExplainerConfig())
