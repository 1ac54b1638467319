"""Bad values of circuit's --model/--task, graph's --logit-position, llc's --known and scrub's hypothesis file
end in one line naming the flag (or the path in the document), the bad value and the choices or the fix
(exit 2), never a traceback or a message about something else (issue 24, items 12 and 13). One fork server
runs every row (:func:`tests.harness.run_cli_many`)."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.graph.build import build_graph
from mechscope.graph.config import GraphConfig
from mechscope.sae.io import save_sae
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE
from tests.harness import check_one_line_error, run_cli_many

GOOD_HYPOTHESIS = (
    "root: output\nnodes:\n  output: {feature: identity, children: [induction]}\n  induction: {sites: ['blocks.1']}\n"
)


@pytest.fixture(scope="module")
def m(tmp_path_factory, zoo_parens):
    """Paths every row uses: random (untrained) transcoders for zoo:parens and bad hypothesis files."""
    root = tmp_path_factory.mktemp("messages")
    d = zoo_parens.model.shape.d_model
    for l in range(len(zoo_parens.model.blocks)):
        sae = TranscoderSAE(TranscoderConfig(d_in=d, latents=8, k=2, d_out=d))
        save_sae(
            sae.eval(),
            root / "tc" / f"L{l}",
            metadata={"site": f"blocks.{l}.mlp:input", "target_site": f"blocks.{l}.mlp"},
        )
    files = {
        "children.yaml": GOOD_HYPOTHESIS.replace("[induction]", "induction"),
        "sites.yaml": GOOD_HYPOTHESIS.replace("['blocks.1']", "5"),
        "seeds.yaml": "seeds: many\n" + GOOD_HYPOTHESIS,
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "binary.yaml").write_bytes(bytes(range(128, 256)))
    (root / "folder.yaml").mkdir()
    return root


def table(m) -> list[tuple[str, list[str], str]]:
    """(name, argv, regex the one error line must match)."""
    graph = [
        "graph",
        "--model",
        "zoo:parens",
        "--prompt",
        "1 2 3",
        "--transcoders",
        str(m / "tc"),
        "--out",
        str(m / "g"),
    ]
    models = r"choose zoo:induction, zoo:parens, an embedded model \(smollm2, gemma3-270m\), a Hugging Face folder or a cached hub id$"
    return [
        ("c-zoo-nosuch", ["circuit", "--model", "zoo:nosuch"], rf"--model 'zoo:nosuch': unknown model; {models}"),
        (
            "c-nosuch",
            ["circuit", "--model", "nosuch"],
            rf"--model 'nosuch': not a zoo model, an embedded model, an existing folder nor a hub id \(org/name\); {models}",
        ),
        ("c-empty", ["circuit", "--model", ""], rf"--model '': empty; {models}"),
        (
            "c-modadd",
            ["circuit", "--model", "zoo:modadd"],
            rf"--model 'zoo:modadd': no circuit task runs on it; {models}",
        ),
        (
            "c-ioi-on-zoo",
            ["circuit", "--model", "zoo:induction", "--task", "ioi"],
            r"--task ioi runs on a Hugging Face language model \(smollm2, gemma3-270m, a folder or a hub id\), not zoo:induction; drop --task to run .*\(induction\)$",
        ),
        (
            "c-zoo-task-on-lm",
            ["circuit", "--model", "smollm2", "--task", "parens"],
            r"--task parens runs on zoo:parens, not smollm2; drop --task to run ioi on smollm2$",
        ),
        (
            "c-task-nosuch",
            ["circuit", "--task", "nosuch"],
            r"--task: unknown task 'nosuch'; choose one of induction, parens, ioi",
        ),
        (
            "g-position-past-end",
            [*graph, "--logit-position", "100"],
            r"--logit-position 100: the prompt has 3 tokens .*; choose a position in 0..2, or -3..-1 counting from the end$",
        ),
        (
            "g-position-before-start",
            [*graph, "--logit-position", "-4"],
            r"--logit-position -4: the prompt has 3 tokens",
        ),
        (
            "g-zoo-nosuch",
            [*graph[:2], "zoo:nosuch", *graph[3:]],
            r"--model 'zoo:nosuch': unknown zoo model; choose one of zoo:induction",
        ),
        (
            "l-known-empty",
            ["llc", "--known", ""],
            r"--known '': unknown known-answer spec; use one of regular:d, monomial:",
        ),
        (
            "l-known-rank",
            ["llc", "--known", "rrr:2,2,2,3"],
            r"--known 'rrr:2,2,2,3': rrr needs M, H, N ≥ 1 and 0 ≤ r ≤ min\(M, H, N\)",
        ),
        (
            "l-known-ints",
            ["llc", "--known", "monomial:1,,2"],
            r"--known 'monomial:1,,2': cannot read the integers '1,,2'",
        ),
        (
            "s-children",
            ["scrub", str(m / "children.yaml")],
            r"hypothesis.nodes.output.children: expected a list of strings, got a string \('induction'\); write it as a list",
        ),
        (
            "s-sites",
            ["scrub", str(m / "sites.yaml")],
            r"hypothesis.nodes.induction.sites: expected a list of strings, got an integer \(5\)",
        ),
        (
            "s-seeds",
            ["scrub", str(m / "seeds.yaml")],
            r"hypothesis.seeds: expected an integer, got a string \('many'\)",
        ),
        ("s-binary", ["scrub", str(m / "binary.yaml")], r"binary.yaml is not UTF-8 text \(byte 0x80 at offset 0\)"),
        ("s-folder", ["scrub", str(m / "folder.yaml")], r"folder.yaml is a directory; pass a YAML file"),
    ]


@pytest.mark.slow
def test_bad_flag_values_end_in_one_line_naming_the_flag(m):
    rows = table(m)
    procs = run_cli_many([argv for _, argv, _ in rows])
    failures = []
    for (name, _argv, match), proc in zip(rows, procs):
        try:
            check_one_line_error(proc, match, 2)
        except AssertionError as err:
            failures.append(f"--- {name}: {err}")
    assert not failures, f"{len(failures)} of {len(rows)} rows failed:\n" + "\n".join(failures)
    assert not (m / "g").exists()  # refused before anything was written


def test_build_graph_refuses_a_logit_position_outside_the_prompt_or_on_a_constant_bos():
    """The library check names the setting, not a flag; a BOS in the constant has no logits to explain
    (it divided by zero before)."""
    from tests.helpers_graph import random_transcoders
    from tests.unit.test_graph import _zoo

    model = _zoo(layer_norm=True, seed=3)
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=True, seed=3)
    ids = torch.tensor([0, 7, 1, 8])
    with pytest.raises(UsageError, match=r"^logit_position 4: the prompt has 4 tokens"):
        build_graph(model, ids, tcs, GraphConfig(logit_position=4), lm=False)
    for position in (0, -4):
        with pytest.raises(
            UsageError, match=rf"^logit_position {position}: that is the BOS token.*bos_mode=.position.$"
        ):
            build_graph(model, ids, tcs, GraphConfig(logit_position=position), bos_id=0, lm=False)
    assert build_graph(model, ids, tcs, GraphConfig(logit_position=0), bos_id=None, lm=False).nodes.logit_pos == 0
