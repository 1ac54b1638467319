"""The methods that read a language model's text: sites, then harvest into a store, a dictionary trained on it, and
the commands that read both (evaluate, report, frontier). Each takes a :class:`Row` and returns its sanity number."""

from __future__ import annotations

from pathlib import Path

import torch

from scripts.coverage_table.cell import cli, flags
from scripts.coverage_table.rows import CORPUS, HARVEST, TRAIN, Row, loaded


def m_sites(row: Row) -> str:
    """Capture every alias; the residual identity resid_post − resid_pre = attn_out + mlp_out at every layer."""
    from mechscope.sites import SiteError, capture, resolve_sites

    core = {k: resolve_sites(row.model, f"{k}.*") for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")}
    extra, refused = {}, []
    for k in ("mlp_in", "z", "q", "k", "v"):
        try:
            extra[k] = resolve_sites(row.model, f"{k}.*")
        except SiteError:
            refused.append(k)
    every = [s for v in (*core.values(), *extra.values()) for s in v]
    with torch.no_grad(), capture(row.model, every) as acts:
        row.model(row.inputs(2))
    err = max(
        float((acts[str(post)] - acts[str(pre)] - acts[str(a)] - acts[str(m)]).abs().max())
        for pre, post, a, m in zip(*core.values())
    )
    if not err < 1e-4:  # the aliases name the wrong modules
        raise AssertionError(f"resid_post − resid_pre differs from attn_out + mlp_out by {err:.2g}")
    return f"identity err {err:.1e}" + (f"; {', '.join(refused)} refused" if refused else "")


def m_harvest(row: Row) -> str:
    from tests.harness import SMALL_TEXT

    store = row.work / "store"
    s = row.sites()
    sites = [s["resid"], *s["mlp_in"], *s["mlp_out"]]
    if row.is_hf:
        res = cli(
            "harvest",
            "--model",
            row.folder,
            "--out",
            store,
            "--site",
            *sites,
            "--source",
            SMALL_TEXT,
            *flags(HARVEST),
            *flags(CORPUS),
        )
        rows = res["rows"]
    else:
        from mechscope.data.text import TextCorpusConfig
        from mechscope.harvest import HarvestConfig, harvest

        st = harvest(
            HarvestConfig(model=row.name, sites=tuple(sites), **HARVEST),
            TextCorpusConfig(source=SMALL_TEXT, **CORPUS),
            store,
            loaded=loaded(row),
            progress=False,
        )
        rows = {"train": st.n_rows(), "val": st.n_rows("val")}
    row.outputs["store"] = store
    return f"{rows['train']} + {rows['val']} rows"


def m_train(row: Row) -> str:
    res = cli(
        "train",
        "--store",
        row.outputs["store"],
        "--site",
        row.sites()["resid"],
        "--out",
        row.work / "sae",
        "--arch",
        "topk",
        *TRAIN,
    )
    row.outputs["sae"] = Path(res["saes"][0]["folder"])
    return f"FVU {res['saes'][0]['fvu']:.2f}"


def m_evaluate(row: Row) -> str:
    args = ("--sae", row.outputs["sae"], "--store", row.outputs["store"], "--site", row.sites()["resid"])
    small = ("--rows", 256, "--contexts", 4, "--mean-rows", 256)
    if row.is_hf:
        res = cli("evaluate", *args, "--model", row.folder, *small)
        splice = res["splice"]
    else:
        from mechscope.cli.evaluate import EvaluateConfig, evaluate_sae
        from mechscope.sae import load_sae
        from mechscope.store import ActivationStore

        _, result = evaluate_sae(
            load_sae(row.outputs["sae"]),
            ActivationStore(row.outputs["store"]),
            row.sites()["resid"],
            loaded(row),
            EvaluateConfig(rows=256, contexts=4, mean_rows=256),
        )
        splice = result.to_dict()
    return f"CE spliced − clean {splice['spliced_loss'] - splice['clean_loss']:+.3f}"


def m_report(row: Row) -> str:
    out = row.work / "report.html"
    small = (
        "--top-latents",
        4,
        "--random-latents",
        2,
        "--max-rows",
        512,
        "--splice-contexts",
        2,
        "--mean-rows",
        256,
        "--distribution-directions",
        2,
        "--distribution-samples",
        200,
        "--no-progress",
    )
    if row.is_hf:
        cli(
            "report",
            "--sae",
            row.outputs["sae"],
            "--store",
            row.outputs["store"],
            "--site",
            row.sites()["resid"],
            "--model",
            row.folder,
            "--out",
            out,
            *small,
        )
    else:
        from mechscope.cli.report import ReportConfig, report_from_store
        from mechscope.sae import load_sae
        from mechscope.store import ActivationStore

        report_from_store(
            out,
            load_sae(row.outputs["sae"]),
            ActivationStore(row.outputs["store"]),
            row.sites()["resid"],
            loaded(row),
            ReportConfig(
                top_latents=4,
                random_latents=2,
                max_rows=512,
                splice_contexts=2,
                mean_rows=256,
                distribution_directions=2,
                distribution_samples=200,
                progress=False,
            ),
        )
    return f"{out.stat().st_size // 1024} kB HTML"


def m_frontier(row: Row) -> str:
    model = ("--model", row.folder, "--loss-contexts", 2) if row.is_hf else ()  # other rows: FVU only
    res = cli(
        "frontier",
        "--sae",
        row.outputs["sae"],
        "--store",
        row.outputs["store"],
        "--site",
        row.sites()["resid"],
        "--out",
        row.work / "frontier",
        "--l0s",
        2,
        4,
        "--coders",
        "encoder",
        "omp",
        "--eval-rows",
        256,
        "--fit-rows",
        256,
        "--batch-size",
        256,
        "--no-progress",
        *model,
    )
    return f"{len(res['points'])} points"


# `mechscope explain` on the row's dictionary, the row's own model writing and judging: 3 latents, each shown
# 3 windows of 6 tokens, 12 new tokens, scored by detection only (so the judge runs for every latent scored) with 20
# bootstrap resamples. On the Llama row scoring cost no more than --no-score within the box's noise (0.9 vs 1.0
# CPU-seconds for the whole command, one trial each).
EXPLAIN = {"count": 3, "max_rows": 512, "top": 3, "per_quantile": 0, "negatives": 2, "before": 4, "after": 1}
EXPLAIN |= {"examples": 3, "max_new_tokens": 12, "scorers": "detection", "n_boot": 20}


def m_explain(row: Row) -> str:
    from mechscope.explain.run import read_explanations

    out = row.work / "explain"
    res = cli(
        "explain",
        "--sae",
        row.outputs["sae"],
        "--store",
        row.outputs["store"],
        "--site",
        row.sites()["resid"],
        "--model",
        row.folder,
        "--explainer-model",
        row.folder,
        "--out",
        out,
        "--no-progress",
        *flags(EXPLAIN),
    )
    if res["done"] != res["planned"]:
        raise AssertionError(f"explain finished {res['done']} of {res['planned']} latents")
    results = read_explanations(out)
    first = results[min(results)]["explanation"]
    return f"{res['done']} explained, {res['scored']} scored; first {len(first)} chars"


# `mechscope probe`: one token-level concept (keyword vs identifier tokens of 16 stdlib contexts of 32 tokens; the
# document-level code_vs_prose has too few held-out rows at this size), k = 1, no absorption; the k-sparse probe runs
# on the dictionary's latents and on the site's own activations.
PROBE = {"concepts": "keyword", "contexts": 16, "context_length": 32, "rows": 200, "ks": 1, "min_rows": 3}


def m_probe(row: Row) -> str:
    from mechscope.probing.features import ACTIVATIONS

    site = row.sites()["resid"]
    res = cli(
        "probe", "--sae", row.outputs["sae"], "--model", row.folder, "--site", site, "--no-absorption", *flags(PROBE)
    )
    scores = res["concepts"]["keyword"]["scores"]
    latents = scores[res["dictionaries"][0]]["1"]["accuracy"]
    return f"keyword k=1 accuracy: latents {latents:.2f}, activations {scores[ACTIVATIONS]['1']['accuracy']:.2f}"
