"""SPD of the zoo's modular-addition transformer: which Fourier frequency each subcomponent serves, and
program replacement with only the subcomponents of chosen frequencies.

Shapes: p the modulus, N = p² inputs "a b =", C subcomponents per target, K alive subcomponents.

The decomposed weights are the MLP's ``fc_in`` [d_mlp, d] and ``fc_out`` [d, d_mlp] (the model's only Linear
layers; W_E, W_U and attention are plain parameters). The compared output is the logits at the "=" position
(KL to the target model's). Training inputs are drawn from all p² pairs: SPD explains what the trained model
computes, and the held-out pairs are where loss recovered is measured.

Frequency of a subcomponent: its inner activation a_c(a, b) = V_cᵀ x at the "=" position over the p × p grid,
2-D DFT Â(k₁, k₂); the energy of frequency k is Σ |Â|² over (k₁, k₂) ∈ {0, ±k}² minus (0, 0), and the
subcomponent's frequency is the k of largest energy; ``purity`` = that energy / all non-constant energy.

Program replacement: splice in only the alive subcomponents whose frequency is in a set S (mask 1), every other
subcomponent masked to 0 (biases kept), and measure on the held-out pairs
loss recovered = (L_ablated − L_S) / (L_ablated − L_clean), with L_ablated the MLP with every subcomponent
masked (its weights zero, biases kept), beside the rock (the best constant predictor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechscope.decompose.analysis import Alive
from mechscope.decompose.spd import SPD
from mechscope.decompose.toys import KnownModel, TargetConfig
from mechscope.evals import metrics as M


def _grid(p: int) -> Tensor:
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], 1)  # [p², 3]


@torch.no_grad()
def frequencies(spd: SPD, live: Alive, p: int) -> list[dict[str, Any]]:
    """Per alive subcomponent: target, index, frequency k, purity."""
    x = _grid(p).to(spd.device)
    inputs: dict[str, list[Tensor]] = {}
    for i in range(0, len(x), 4096):
        _, got = spd.run_target(x[i : i + 4096])
        for n, v in got.items():
            inputs.setdefault(n, []).append(v[:, 2])
    acts = {n: torch.cat(v) for n, v in inputs.items()}
    ks = torch.arange(1, (p - 1) // 2 + 1)
    out = []
    for n, c in live.labels:
        a = (acts[n] @ spd.comp(n).V[:, c]).reshape(p, p).double()
        P = torch.fft.fft2(a - a.mean()).abs().pow(2)
        energy = torch.stack([P[[0, 0, k, -k, k, k, -k, -k], [k, -k, 0, 0, k, -k, k, -k]].sum() for k in ks.tolist()])
        best = int(energy.argmax())
        out.append(
            {
                "target": n,
                "index": c,
                "frequency": int(ks[best]),
                "purity": float(energy[best] / P.sum().clamp_min(1e-30)),
            }
        )
    return out


@torch.no_grad()
def splice_losses(spd: SPD, task, masks: dict[str, Tensor] | None) -> Tensor:
    """Held-out loss per pair [N] with the given per-target masks [C] (None = the unchanged model)."""
    x, y = task.val_inputs.to(spd.device), task.val_targets.to(spd.device)
    losses = []
    for i in range(0, len(x), 4096):
        xb = x[i : i + 4096]
        logits = spd.model(xb) if masks is None else _masked_logits(spd, xb, masks)
        losses.append(task.loss(logits, y[i : i + 4096]))
    return torch.cat(losses)


def splice_loss(spd: SPD, task, masks: dict[str, Tensor] | None) -> float:
    """Mean held-out loss with the given per-target masks [C] (None = the unchanged model)."""
    return float(splice_losses(spd, task, masks).mean())


def _masked_logits(spd: SPD, x: Tensor, masks: dict[str, Tensor]) -> Tensor:
    out = spd.output
    spd.output = lambda y: y  # the full logits, for the task's loss
    try:
        return spd.run_masked(x, masks)
    finally:
        spd.output = out


def program_replacement(
    spd: SPD, live: Alive, freqs: list[dict[str, Any]], task, key_freqs: list[int]
) -> dict[str, Any]:
    """Loss recovered by splicing only the subcomponents of each key frequency, of all key frequencies, and of
    all alive subcomponents; with the clean, ablated and rock losses."""
    C = spd.cfg.C

    def masks_for(keep) -> dict[str, Tensor]:
        m = {n: torch.zeros(C, device=spd.device) for n in spd.names}
        for f in freqs:
            if keep(f):
                m[f["target"]][f["index"]] = 1.0
        return m

    clean_per = splice_losses(spd, task, None)
    ablated_per = splice_losses(spd, task, masks_for(lambda f: False))
    clean, ablated = float(clean_per.mean()), float(ablated_per.mean())
    rock = float(task.rock(task.val_targets).mean())
    gap_se = M.clustered_stderr(
        ablated_per.double() - clean_per.double(), torch.ones(len(clean_per), device=spd.device)
    )
    notes: list[str] = []

    def recovered(L: float) -> float:
        r = M.loss_recovered(clean=clean, ablated=ablated, spliced=L, gap_se=gap_se)
        warning = r.warning("every subcomponent ablated")
        if warning is not None and not notes:
            notes.append(warning)
        return r.value

    rows = []
    sets = [("all alive", lambda f: True), ("key frequencies " + str(key_freqs), lambda f: f["frequency"] in key_freqs)]

    def only(k: int) -> Callable[[dict], bool]:
        return lambda f: f["frequency"] == k

    def all_but(k: int) -> Callable[[dict], bool]:
        return lambda f: f["frequency"] != k

    sets += [(f"only k={k}", only(k)) for k in key_freqs]
    sets += [(f"all alive but k={k}", all_but(k)) for k in key_freqs]
    for name, keep in sets:
        L = splice_loss(spd, task, masks_for(keep))
        rows.append(
            {"set": name, "subcomponents": sum(1 for f in freqs if keep(f)), "loss": L, "loss_recovered": recovered(L)}
        )
    return {"clean_loss": clean, "ablated_loss": ablated, "rock_loss": rock, "rows": rows, "warnings": notes}


def modadd_target(cfg: TargetConfig) -> KnownModel:
    from mechscope.models.resolve import resolve_model
    from mechscope.scrub.programs import key_frequencies

    zm = resolve_model("zoo:modadd").zoo
    task, model = zm.task, zm.model
    p = task.n_classes
    x_all = _grid(p)
    keys, _ = key_frequencies(model.W_E.detach(), p)

    def batch(step: int) -> Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return x_all[torch.randint(len(x_all), (cfg.batch_size,), generator=g)]

    def describe(i: int) -> str:  # i indexes (input, position) pairs: the MLP runs at all 3 positions
        row, pos = divmod(i, x_all.shape[1])
        a, b = int(x_all[row, 0]), int(x_all[row, 1])
        return f"{a} + {b} = {(a + b) % p} (mod {p}) at position {pos} ({'ab='[pos]})"

    def extra(spd: SPD, live: Alive) -> dict[str, Any]:
        freqs = frequencies(spd, live, p)
        per_freq: dict[int, dict[str, int]] = {}
        for f in freqs:
            per_freq.setdefault(f["frequency"], {n: 0 for n in spd.names})[f["target"]] += 1
        return {
            "key_frequencies": keys,
            "subcomponent_frequencies": freqs,
            "components_per_frequency": {str(k): v for k, v in sorted(per_freq.items())},
            "program_replacement": program_replacement(spd, live, freqs, task, keys),
        }

    def report_html(res: dict[str, Any]) -> str:
        from mechscope.report.markup import e, table

        pr = res["program_replacement"]
        freq_rows = [
            (f"{k}{' (key)' if int(k) in keys else ''}", *counts.values())
            for k, counts in res["components_per_frequency"].items()
        ]
        names = list(next(iter(res["components_per_frequency"].values()), {}).keys())
        rows = [(r["set"], r["subcomponents"], f"{r['loss']:.4f}", float(r["loss_recovered"])) for r in pr["rows"]]
        return (
            f"<p>Key frequencies of W_E: {keys}. Alive subcomponents per frequency (by the DFT of their inner activation):</p>"
            + table(("frequency", *names), freq_rows)
            + f"<p>Program replacement on the held-out pairs: clean {pr['clean_loss']:.4f}, every subcomponent ablated "
            f"{pr['ablated_loss']:.4f}, rock {pr['rock_loss']:.4f}.</p>"
            + "".join(f"<p>{e(w)}</p>" for w in pr.get("warnings", []))
            + table(
                ("spliced set", "subcomponents", "loss", "loss recovered"), rows, fmt="{:.3f}", classes=("", "", "num")
            )
        )

    return KnownModel(
        model,
        batch,
        x_all,
        describe,
        None,
        output=lambda y: y[:, 2],
        output_loss="kl",
        info={"model": f"zoo modadd p={p}", "zoo_metrics": zm.metrics},
        extra=extra,
        report_html=report_html,
    )
