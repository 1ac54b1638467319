"""``mechscope circuit --sae SITE=DIR SITE=DIR`` on zoo:induction: two tiny TopK SAEs trained in the test on the
model's own residual stream, spliced at two sites; the JSON holds latent and error nodes at both sites."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.sae.io import save_sae
from mechscope.sae.topk import TopKConfig, TopKSAE
from mechscope.sites import capture
from tests.harness import assert_one_line_error, run_cli

SITES = ("blocks.0", "blocks.1")  # the residual stream after block 0 and block 1


@pytest.fixture(scope="module")
def specs(tmp_path_factory, zoo_induction) -> list[str]:
    """SITE=DIR for a 32-latent TopK SAE (k = 4) at each site, trained on zoo:induction's own activations."""
    from mechscope.circuits.tasks import TASKS

    tmp_path = tmp_path_factory.mktemp("saes")
    torch.manual_seed(0)
    model, task = TASKS["induction"](64, seed=5)
    with torch.no_grad(), capture(model, list(SITES)) as acts:
        model(task.clean)
    specs = []
    for site in SITES:
        x = acts[site].reshape(-1, acts[site].shape[-1]).float()
        sae = TopKSAE(TopKConfig(d_in=x.shape[1], latents=32, k=4))
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
        for _ in range(80):  # a few seconds: a rough dictionary is enough to give latents a meaning
            loss = ((sae.decode(sae.encode(x)) - x) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        specs.append(f"{site}={save_sae(sae, tmp_path / site, metadata={'site': site})}")
    return specs


def test_latent_circuit_at_two_sites_from_the_command_line(tmp_path, specs):
    save, report = tmp_path / "c.json", tmp_path / "c.html"
    proc = run_cli(
        [
            "circuit",
            "--model",
            "zoo:induction",
            "--method",
            "atp",
            "--sae",
            *specs,
            "--top",
            "6",
            "--examples",
            "40",
            "--budget",
            "12",
            "--json",
            "--save",
            str(save),
            "--report",
            str(report),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert set(out["latent_sites"]) == set(SITES)
    scored = {s["name"] for s in out["scores"]}
    for site in SITES:
        assert out["latent_sites"][site]["active"] > 0
        assert f"{site}#error" in scored
        assert any(n.startswith(site + "#") and not n.endswith("error") for n in scored)
    assert len(out["nodes"]) == 6 and all("#" in n["name"] for n in out["nodes"])
    f = out["faithfulness"]
    assert f["nodes_total"] == len(scored) and f["loss_full"] < f["loss_empty"]
    assert f["recovered_ci"][0] <= f["recovered"] <= f["recovered_ci"][1]
    assert out["agreement_with_exact"]["budget"] == 12
    assert json.loads(save.read_text())["latent_sites"][SITES[0]]["splice"] == "sae0"
    assert out["nodes"][0]["name"] in report.read_text()


def test_latent_circuit_requests_end_in_one_line(specs):
    assert_one_line_error(
        ["circuit", "--model", "zoo:induction", "--sae", "resid_post.0"],
        r"--sae 'resid_post.0': expected SITE=DIR",
        code=2,
    )
    assert_one_line_error(
        ["circuit", "--model", "zoo:induction", "--method", "eap", "--sae", specs[0]],
        r"scores edges of the residual graph, not SAE latents; use --method exact",
        code=2,
    )
    wrong = specs[0].replace("blocks.0=", "blocks.1=")
    assert_one_line_error(
        ["circuit", "--model", "zoo:induction", "--sae", wrong], r"trained at 'blocks.0'.*: --sae blocks.0=", code=2
    )
