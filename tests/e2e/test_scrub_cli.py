"""``mechscope scrub`` and ``mechscope zoo`` from the command line: the JSON table and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import assert_one_line_error, run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scrub"


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "h.yaml"
    p.write_text(text)
    return str(p)


def test_scrub_json_has_the_table(zoo_modadd, tmp_path):
    report = tmp_path / "scrub.html"
    proc = run_cli(
        [
            "scrub",
            str(EXAMPLES / "modadd-correct.yaml"),
            "--model",
            "zoo:modadd",
            "--examples",
            "200",
            "--seeds",
            "2",
            "--json",
            "--report",
            str(report),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for key in (
        "loss_clean",
        "loss_scrubbed",
        "loss_scrubbed_ci",
        "loss_baseline",
        "loss_rock",
        "recovered",
        "verdict",
    ):
        assert key in out
    assert out["loss_clean"] - 1e-3 <= out["loss_scrubbed"] < out["loss_baseline"]
    assert out["examples"] == 200 and out["seeds"] == 2
    assert (
        out["report"] == str(report) and "modadd-correct.yaml" in report.read_text()
    )  # --report: the row is in the page


def test_zoo_list_json(zoo_induction):
    proc = run_cli(["zoo", "list", "--json"])
    assert proc.returncode == 0, proc.stderr
    models = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert set(models) == {"parens", "modadd", "induction"} and models["induction"]["trained"]


def test_bad_hypotheses_end_in_one_line_naming_the_node(tmp_path, zoo_induction):
    bad_key = write(tmp_path, "root: out\nnodes:\n  out: {children: [n]}\n  n: {sites: [blocks.0], feture: token}\n")
    assert_one_line_error(
        ["scrub", bad_key, "--model", "zoo:induction"], r"node 'n': unknown key\(s\) 'feture'", code=2
    )
    cycle = write(tmp_path, "root: a\nnodes:\n  a: {children: [b]}\n  b: {sites: [blocks.0], children: [a]}\n")
    assert_one_line_error(["scrub", cycle, "--model", "zoo:induction"], r"node 'a': cycle a → b → a", code=2)
    missing_site = write(
        tmp_path, "root: out\nnodes:\n  out: {children: [n]}\n  n: {sites: [blocks.7.attn], feature: none}\n"
    )
    assert_one_line_error(
        ["scrub", missing_site, "--model", "zoo:induction", "--examples", "50"],
        r"node 'n': unknown site 'blocks.7.attn'",
        code=2,
    )
    assert_one_line_error(["scrub", str(tmp_path / "nope.yaml"), "--model", "zoo:induction"], r"does not exist", code=2)
    assert_one_line_error(["scrub", missing_site], r"no model: pass --model \(zoo:NAME", code=2)


def row_index(x, y):
    """A feature that puts every input in its own class (so a separate pool never holds an equivalent)."""
    import torch

    return torch.arange(x.shape[0])


def explodes(x, y):
    raise ValueError("no such token")


def wrong_shape(x, y):
    return x[:3]


def test_bad_features_and_empty_classes_end_in_one_line_naming_the_node(tmp_path, zoo_modadd):
    """Through the CLI: a feature that raises, one of the wrong shape, and an empty equivalence class."""
    from tests.harness import check_one_line_error, run_cli_many

    me = "tests.e2e.test_scrub_cli"
    head = "model: zoo:modadd\nexamples: 40\nseeds: 2\nroot: out\nnodes:\n  out: {children: [r]}\n"
    cases = []
    for name, extra, feature in (
        ("raises", "", "explodes"),
        ("shape", "", "wrong_shape"),
        ("empty", "pool: 30\n", "row_index"),
    ):
        p = tmp_path / f"{name}.yaml"
        p.write_text(extra + head + f"  r: {{sites: [blocks.0], feature: '{me}:{feature}'}}\n")
        cases.append(["scrub", str(p)])
    procs = run_cli_many(cases)
    check_one_line_error(procs[0], r"node 'r': feature '.*:explodes' raised ValueError: no such token", 2)
    check_one_line_error(
        procs[1], r"node 'r': feature '.*:wrong_shape' returned \(3, 3\); expected \[N\] or \[N, k\]", 2
    )
    check_one_line_error(procs[2], r"node 'r': empty equivalence class .* enlarge the pool or coarsen the feature", 2)
