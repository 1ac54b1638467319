"""Hypotheses as data: strict YAML loading and one error per kind of bad hypothesis, each naming the node."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.scrub import HypothesisError, Scrubber, hypothesis_from_dict, load_hypothesis
from tests.unit.test_scrub_engine import Toy, data  # noqa: F401  (shared toy model)

MOD = "tests.unit.test_scrub_engine"


def two_nodes(child: dict, root_extra: dict | None = None) -> dict:
    return {"root": "out", "seeds": 2, "nodes": {"out": {"children": ["n"], **(root_extra or {})}, "n": child}}


def scrub(d: dict, **kw):
    x, y, task = data()
    return Scrubber(Toy(), hypothesis_from_dict(d), x, y, task, **kw).run()


def test_yaml_round_trip_and_description(tmp_path):
    p = tmp_path / "h.yaml"
    p.write_text(
        "# claims: the output reads parity only\nroot: out\nseeds: 3\nnodes:\n  out: {children: [n]}\n"
        f"  n: {{sites: [feat], feature: '{MOD}:feat_x0'}}\n"
    )
    h = load_hypothesis(p)
    assert h.description == "claims: the output reads parity only"
    assert h.seeds == 3 and [n.name for n in h.nodes()] == ["out", "n"]
    assert h.root.children[0].sites == ("feat",)


@pytest.mark.parametrize(
    "d, match",
    [
        ({"root": "out", "nodes": {"out": {}}, "seed": 3}, r"hypothesis: unknown key\(s\) 'seed'"),
        (two_nodes({"sites": ["feat"], "featur": "identity"}), r"node 'n': unknown key\(s\) 'featur'"),
        (
            {"root": "a", "nodes": {"a": {"children": ["b"]}, "b": {"sites": ["feat"], "children": ["a"]}}},
            r"node 'a': cycle a → b → a",
        ),
        (two_nodes({"sites": ["feat"], "children": ["ghost"]}), r"node 'n' names child 'ghost'"),
        ({"root": "out", "nodes": {"out": {"sites": ["feat"]}}}, r"node 'out': the root is the model's output"),
        (two_nodes({"sites": ["feat"], "feature": "no_such_feature"}), r"node 'n': unknown feature 'no_such_feature'"),
        ({"root": "out", "nodes": {}}, r"needs `root: NAME`"),
        (two_nodes({"sites": ["feat"], "rest": "identity"}), r"node 'n': `rest` applies to nodes with children"),
        (two_nodes({"sites": ["feat"]}, {"rest": "prev_token"}), r"node 'out': rest 'prev_token' is per-position"),
        (two_nodes({"sites": ["feat"]}, {"rest": "no_such"}), r"node 'out': unknown feature 'no_such'"),
        (
            {**two_nodes({"sites": ["feat"]}), "task_args": [1]},
            r"hypothesis.task_args: expected a mapping, got a list$",
        ),
    ],
)
def test_malformed_hypotheses_are_refused_naming_the_problem(d, match):
    with pytest.raises(HypothesisError, match=match):
        hypothesis_from_dict(d)


def test_pool_task_args_and_rest_are_read():
    h = hypothesis_from_dict(
        {**two_nodes({"sites": ["feat"]}, {"rest": "identity"}), "pool": 300, "task_args": {"seg": 9}}
    )
    assert h.pool == 300 and dict(h.task_args) == {"seg": 9}
    assert h.root.rest.name == "identity" and h.root.children[0].rest.name == "none"


def test_per_position_feature_on_an_inner_node_is_refused():
    d = {
        "root": "out",
        "nodes": {
            "out": {"children": ["n"]},
            "n": {"sites": ["other"], "feature": "prev_token", "children": ["m"]},
            "m": {"sites": ["feat"]},
        },
    }
    with pytest.raises(HypothesisError, match=r"node 'n': a per-position feature"):
        hypothesis_from_dict(d)


def test_unknown_site_names_the_node():
    with pytest.raises(HypothesisError, match=r"node 'n': unknown site 'fet'.*did you mean 'feat'"):
        scrub(two_nodes({"sites": ["fet"], "feature": "identity"}))


def test_feature_that_raises_names_the_node():
    with pytest.raises(HypothesisError, match=r"node 'n': feature '.*:raises' raised RuntimeError: boom"):
        scrub(two_nodes({"sites": ["feat"], "feature": f"{MOD}:raises"}))


def test_feature_of_wrong_shape_names_the_node():
    with pytest.raises(
        HypothesisError,
        match=r"node 'n': feature '.*:bad_shape' returned \(3, 4\); expected \[N\] or \[N, k\] with N = 512",
    ):
        scrub(two_nodes({"sites": ["feat"], "feature": f"{MOD}:bad_shape"}))


def test_child_downstream_of_its_parent_is_refused():
    d = {
        "root": "out",
        "seeds": 2,
        "nodes": {
            "out": {"children": ["late"]},
            "late": {"sites": ["feat"], "children": ["n"]},
            "n": {"sites": ["out"]},
        },
    }
    with pytest.raises(HypothesisError, match=r"node 'n': its site 'out' is not computed before node 'late'"):
        scrub(d)


def test_empty_equivalence_class_names_the_node():
    """References with odd x_0 but a pool holding only even x_0: no equivalent input exists."""
    x, y, task = data()
    even = x[x[:, 0] % 2 == 0]
    h = hypothesis_from_dict(two_nodes({"sites": ["feat"], "feature": f"{MOD}:feat_x0"}))
    with pytest.raises(HypothesisError, match=r"node 'n': empty equivalence class"):
        Scrubber(Toy(), h, x, y, task, pool_inputs=even, pool_targets=even[:, 0] % 2).run()


def test_value_of_wrong_shape_from_a_program_names_the_node():
    d = two_nodes({"sites": ["feat"], "program": f"{MOD}:wrong_program"})
    h = hypothesis_from_dict(d)
    x, y, task = data()
    from mechscope.scrub.programs import build_programs

    with pytest.raises(HypothesisError, match=r"node 'n': its value at site 'feat' has shape \(512, 3\)"):
        Scrubber(Toy(), h, x, y, task, programs=build_programs(h.nodes(), Toy(), task)).run()


def test_bad_top_level_numbers_are_usage_errors():
    with pytest.raises(UsageError, match="seeds must be ≥ 2"):
        hypothesis_from_dict({"root": "out", "seeds": 1, "nodes": {"out": {}}})


def test_channels_patch_only_a_slice():
    """Patching channel 1 of ``feat`` from a random input, channel 0 kept: the toy reads f_1 − f_0, so the
    result differs from both the clean and the fully resampled value."""
    torch.manual_seed(0)
    full = scrub(two_nodes({"sites": ["feat"], "feature": "none"}))
    part = scrub(two_nodes({"sites": ["feat"], "feature": "none", "channels": [1, 2]}))
    assert part.loss_clean == full.loss_clean
    assert part.loss_scrubbed != pytest.approx(full.loss_scrubbed, rel=1e-3)
    assert part.loss_scrubbed > part.loss_clean


@pytest.mark.parametrize(
    "d, match",
    [
        (
            {"root": "out", "nodes": {"out": {"children": "n"}, "n": {"sites": ["feat"]}}},
            r"^hypothesis.nodes.out.children: expected a list of strings, got a string \('n'\); write it as a list: \[n\]$",
        ),
        (two_nodes({"sites": 5}), r"^hypothesis.nodes.n.sites: expected a list of strings, got an integer \(5\)$"),
        (
            two_nodes({"sites": ["feat", 3]}),
            r"^hypothesis.nodes.n.sites\[1\]: expected a string, got an integer \(3\)$",
        ),
        (
            {**two_nodes({"sites": ["feat"]}), "seeds": "many"},
            r"^hypothesis.seeds: expected an integer, got a string \('many'\)$",
        ),
        (
            {**two_nodes({"sites": ["feat"]}), "examples": 2.5},
            r"^hypothesis.examples: expected an integer, got a number \(2.5\)$",
        ),
        (
            {**two_nodes({"sites": ["feat"]}), "pool": True},
            r"^hypothesis.pool: expected an integer, got a boolean \(True\)$",
        ),
        ({**two_nodes({"sites": ["feat"]}), "root": 5}, r"^hypothesis.root: expected a string, got an integer \(5\)$"),
        (
            {**two_nodes({"sites": ["feat"]}), "model": ["zoo:parens"]},
            r"^hypothesis.model: expected a string, got a list$",
        ),
        ({"root": "out", "nodes": ["out"]}, r"^hypothesis.nodes: expected a mapping, got a list$"),
        (
            {"root": "out", "nodes": {"out": {}, 1: {}}},
            r"^hypothesis.nodes: node names must be strings, got an integer \(1\); quote it$",
        ),
        (
            {**two_nodes({"sites": ["feat"]}), "task_args": {1: 2}},
            r"^hypothesis.task_args: argument names must be strings",
        ),
        (
            two_nodes({"sites": ["feat"], "feature": 7}),
            r"^hypothesis.nodes.n.feature: expected a string, got an integer \(7\)$",
        ),
        (
            two_nodes({"sites": ["feat"], "per_position": "yes"}),
            r"^hypothesis.nodes.n.per_position: expected true or false, got a string",
        ),
        (
            two_nodes({"sites": ["feat"], "channels": [0, "2"]}),
            r"^hypothesis.nodes.n.channels\[1\]: expected an integer, got a string \('2'\)$",
        ),
        (
            two_nodes({"sites": ["feat"], "program_args": "x"}),
            r"^hypothesis.nodes.n.program_args: expected a mapping, got a string",
        ),
        (two_nodes({"sites": ["feat"], "description": 3}), r"^hypothesis.nodes.n.description: expected a string"),
        (
            {
                **two_nodes({"sites": ["feat"]}),
                "nodes": {"out": {"children": ["n"]}, "n": {"sites": ["feat"]}, "spare": {"sites": 1}},
            },
            r"^hypothesis.nodes.spare.sites: expected a list",
        ),  # a node the root does not reach is checked too
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_their_path(d, match):
    with pytest.raises(HypothesisError, match=match):
        hypothesis_from_dict(d)


def test_null_values_mean_the_default_and_one_bare_site_is_a_list_of_one():
    h = hypothesis_from_dict(
        {**two_nodes({"sites": "feat", "children": None, "description": None}), "seeds": None, "task_args": None}
    )
    assert h.seeds == 8 and h.task_args == () and h.root.children[0].sites == ("feat",)


def test_hypothesis_files_that_are_not_yaml_text_are_refused_in_one_line(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "nul.yaml").write_bytes(b"root: out\x00\x00")
    (tmp_path / "dir.yaml").mkdir()
    cases = {
        "bin.yaml": r"is not UTF-8 text \(byte 0x89 at offset 0\)",
        "nul.yaml": r"is a binary file \(it holds NUL bytes\)",
        "dir.yaml": r"is a directory; pass a YAML file",
        "none.yaml": r"does not exist",
    }
    for name, match in cases.items():
        with pytest.raises(HypothesisError, match=rf"^hypothesis file {tmp_path / name} {match}") as err:
            load_hypothesis(tmp_path / name)
        assert "\n" not in str(err.value)


def test_a_utf8_byte_order_mark_is_not_part_of_the_description(tmp_path):
    p = tmp_path / "h.yaml"
    p.write_bytes(
        "\ufeff# reads parity\nroot: out\nseeds: 2\nnodes:\n  out: {children: [n]}\n  n: {sites: [feat]}\n".encode()
    )
    assert load_hypothesis(p).description == "reads parity"
