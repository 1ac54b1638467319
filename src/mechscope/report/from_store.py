"""The report of an SAE on an activation store: the store's held-out split gives the rows, their tokens and each
row's (context, position); its training split gives the mean for mean-ablation and the rock's tokens; the model
gives the splice and the unembedding W_U for the logit effects (``mechscope report`` and ``mechscope.report``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechscope.errors import UsageError
from mechscope.evals.evaluate import store_task
from mechscope.models.loading import device_of
from mechscope.report.build import ReportConfig, ReportOutcome, build_report
from mechscope.report.html import Section


def token_decoder(tokenizer: Any) -> Callable[[int], str]:
    """id → the token's text (as it would print in context), cached."""
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([int(i)])
        return cache[i]

    return text


def explanation_lines(folder: str | Path) -> dict[int, tuple[str, str]]:
    """latent → (explanation, one line of its scores) from the ``explanations.json`` that ``mechscope explain``
    wrote in ``folder`` ({} when there is none). The line reads, per scorer, the explanation's AUROC with its
    interval beside the random and the constant explanations' AUROC, then whether it beats the random one."""
    from mechscope.explain.run import read_explanations

    out = {}
    for i, r in read_explanations(folder).items():
        if not r.get("explanation"):
            continue
        parts = []
        for name, s in ((r.get("scores") or {}).get("scores") or {}).items():
            t = s["true"]
            parts.append(
                f"{name} {t['auroc']:.2f} [{t['low']:.2f}, {t['high']:.2f}] vs random {s['random']['auroc']:.2f}, "
                f"constant {s['constant']['auroc']:.2f}"
            )
        if r.get("beats_random") is not None:
            parts.append("beats random" if r["beats_random"] else "unexplained: does not beat random")
        out[i] = (str(r["explanation"]), " · ".join(parts))
    return out


def report_from_store(
    out: str | Path,
    sae: Any,
    store: Any,
    site: str,
    lm: Any,
    cfg: ReportConfig = ReportConfig(),
    *,
    run_config: dict[str, Any] | None = None,
    extra_points: list[dict[str, Any]] | None = None,
    sections: list[Section] | None = None,
    explanations: dict[int, tuple[str, str]] | None = None,
) -> ReportOutcome:
    """Build the report of ``sae`` (anything with encode/decode/W_dec) on ``store``'s held-out split,
    splicing into ``lm.model`` (a :class:`~mechscope.models.LoadedModel`) at ``site``, and write it to ``out``. ``sae``
    is moved (in place) to the model's device: its encoder pass and the splice run there. ``explanations``:
    :func:`explanation_lines`, shown on the latent cards."""
    site = store.site_name(site)
    n_val = store.n_rows("val")
    if n_val == 0:
        raise UsageError(f"store {store.path} has no held-out (val) rows; harvest with `val_tokens` > 0")
    if store.d(site) != sae.W_dec.shape[1]:
        raise UsageError(
            f"the SAE reads width {sae.W_dec.shape[1]} but site {site} of the store has width {store.d(site)}; "
            "use the SAE trained on this site"
        )
    n_mean = min(cfg.mean_rows, store.n_rows("train"))
    sae.to(device_of(lm.model))
    return build_report(
        out,
        sae,
        lambda a, b: store.rows(site, a, b, "val"),
        n_val,
        store.tokens("val"),
        lambda r: store.row_to_position(r, "val"),
        token_decoder(lm.tokenizer),
        cfg=cfg,
        model=lm.model,
        site=site,
        splice_task=store_task(store, lm.model),
        mean_act=store.mean(site, cfg.mean_rows, seed=cfg.seed, batch_size=cfg.batch_size),
        mean_source=f"{n_mean:,} training rows of the store",
        skip_first_positions=store.first_position,
        W_U=lm.model.get_output_embeddings().weight.detach(),
        run_config=run_config,
        extra_points=extra_points or [],
        sections=sections or [],
        explanations=explanations,
    )
