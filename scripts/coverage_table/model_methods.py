"""The methods that run the model itself: scrub, circuit discovery, attribution graphs, anomaly detection, the
LLC and parameter decomposition. Each takes a :class:`Row` and returns its sanity number."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from scripts.coverage_table.cell import cli
from scripts.coverage_table.rows import PROMPT, TRAIN, Row, loaded


def _hypothesis(row: Row) -> dict[str, Any]:
    """A trivial hypothesis: the output reads the last MLP only through its whole output, resampled (feature none)."""
    return {
        "task_args": {"seg": 6, "vocab_size": 20},
        "seeds": 2,
        "examples": 16,
        "root": "output",
        "nodes": {
            "output": {"feature": "identity", "rest": "identity", "children": ["mlp"]},
            "mlp": {"sites": [row.sites()["mlp_out"][1]], "feature": "none"},
        },
    }


class _ClassifierScoring:
    """The scoring a scrubbed or circuit-ablated classifier needs (loss and rock per example)."""

    def __init__(self, train_labels: Tensor, n_classes: int) -> None:
        from mechscope.evals.rock import Rock

        self.rock_model = Rock.fit(train_labels, n_classes)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, reduction="none")

    def rock(self, targets: Tensor) -> Tensor:
        return self.rock_model.nll(targets)


def _classifier_labels(row: Row, x: Tensor) -> Tensor:
    with torch.no_grad():
        return row.model(x).argmax(-1)


def m_scrub(row: Row) -> str:
    hyp = _hypothesis(row)
    if row.is_hf:
        import yaml

        path = row.work / "hypothesis.yaml"
        path.write_text(yaml.safe_dump({"task": "repeated_tokens", **hyp}))
        res = cli("scrub", path, "--model", row.folder)
        return f"loss clean {res['loss_clean']:.2f}, scrubbed {res['loss_scrubbed']:.2f}"
    from mechscope.scrub import TASKS, Target, hypothesis_from_dict, run_hypothesis
    from mechscope.scrub.tasks import Loaded

    if row.is_lm:
        task, x, y = TASKS["repeated_tokens"](Loaded(row.model, row.tokenizer), 16, **hyp["task_args"])
    else:
        x = row.inputs(16)
        y = _classifier_labels(row, x)
        task = _ClassifierScoring(_classifier_labels(row, row.inputs(256, seed=1)), 4)
    hyp.pop("task_args")
    res = run_hypothesis(hypothesis_from_dict(hyp), Target(row.model, task, x, y, row.name))
    return f"loss clean {res.loss_clean:.2f}, scrubbed {res.loss_scrubbed:.2f}"


def circuit(row: Row, method: str) -> str:
    flags = ("--method", method, "--examples", 8, "--budget", 4, "--top", 5)
    if row.is_hf:
        res = cli("circuit", "--model", row.folder, "--task", "ioi", *flags)
    else:
        from mechscope.circuits.discover import DiscoverConfig, discover

        res = discover(row.model, _module_task(row), DiscoverConfig(method=method, budget=4, top=5))
    return f"{len(res['nodes'])} nodes, {len(res['edges'])} edges"


def _module_task(row: Row) -> Any:
    """A clean/corrupted task for a model outside the family table: text vs random tokens (logit of token 1 −
    token 2 at the last position), or for the classifier its inputs vs others (logit of class 0 − class 1)."""
    from mechscope.circuits.tasks import CircuitTask, logits_of
    from mechscope.task import Task

    clean = row.inputs(8)
    corrupt = (
        torch.randint(0, len(row.tokenizer), clean.shape, generator=torch.Generator().manual_seed(5))
        if row.is_lm
        else row.inputs(8, seed=2)
    )

    def metric(out: Any) -> Tensor:
        last = logits_of(out)[:, -1] if row.is_lm else logits_of(out)
        return (last[:, 1] - last[:, 2]).mean()

    if row.is_lm:
        targets = clean[:, -1]
        train = row.inputs(64, seed=1)
        scoring = Task(row.name, train, train[:, -1], clean, targets, positions=(-2,), n_classes=len(row.tokenizer))
        kl = torch.zeros_like(clean, dtype=torch.bool)
        kl[:, -1] = True
    else:
        targets = _classifier_labels(row, clean)
        scoring = _ClassifierScoring(_classifier_labels(row, row.inputs(256, seed=1)), 4)
        kl = torch.ones(len(clean), 1, dtype=torch.bool)
    return CircuitTask(row.name, clean, corrupt, metric, "logit 1 − logit 2", scoring, targets, kl)


def m_graph(row: Row) -> str:
    s, store, tcs = row.sites(), row.outputs["store"], row.work / "transcoders"
    for layer, (src, dst) in enumerate(zip(s["mlp_in"], s["mlp_out"])):
        cli(
            "train",
            "--store",
            store,
            "--site",
            src,
            "--target-site",
            dst,
            "--arch",
            "transcoder",
            "--out",
            tcs / f"L{layer}",
            *TRAIN,
        )
    if row.is_hf:
        res = cli(
            "graph",
            "--model",
            row.folder,
            "--prompt",
            PROMPT,
            "--transcoders",
            tcs,
            "--store",
            store,
            "--out",
            row.work / "graph",
            "--max-logits",
            2,
        )
    else:
        from mechscope.graph.build import build_graph
        from mechscope.graph.config import GraphConfig
        from mechscope.graph.replacement import find_transcoders

        ids = row.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
        res = build_graph(
            row.model, ids, find_transcoders(row.model, tcs), GraphConfig(max_logits=2), progress=False
        ).summary()
    c = res[
        "checks"
    ]  # the graph's known answer: edges + constant = each target (relative), replay = the model's logits
    return (
        f"replacement score {res['replacement_score']:.2f}; exactness: relative residual {c['max_relative_residual']:.0e}, "
        f"logit gap {c['max_logit_gap']:.0e}"
    )


def m_detect(row: Row) -> str:
    """Mahalanobis fit on trusted inputs, AUROC of anomalous inputs (random tokens; shifted vectors) vs held-out ones."""
    from mechscope.anomaly import make_detector
    from mechscope.anomaly.metrics import separation

    trusted, clean = row.inputs(64), row.inputs(16, seed=4)
    if row.is_lm:
        odd = torch.randint(0, len(row.tokenizer), clean.shape, generator=torch.Generator().manual_seed(3))
    else:
        odd = 3 * row.inputs(16, seed=5) + 2
    det = make_detector("mahalanobis").fit(row.model, trusted, [row.sites()["resid"]])
    scores = det.score(torch.cat([clean, odd]))
    return f"AUROC {separation(scores[:16], scores[16:], n_boot=0).auroc:.2f}"


def m_llc(row: Row) -> str:
    from mechscope.slt.estimator import LLCConfig, estimate_llc

    model = row.model.requires_grad_(True)  # estimate_llc puts w* back when it is done
    x = (
        row.inputs(8)[:, :16] if row.is_lm else row.inputs(32)
    )  # small: each step is a backward through the whole vocabulary

    def loss_fn(m: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        (xb,) = batch
        lg = row.logits(m, xb)
        if row.is_lm:
            return nn.functional.cross_entropy(lg[:, :-1].flatten(0, 1), xb[:, 1:].flatten())
        return nn.functional.cross_entropy(lg, _classifier_labels(row, xb))

    cfg = LLCConfig(chains=2, draws=6, burn_in=2, batch_size=4, epsilon=1e-5, mala_every=0)
    try:
        res = estimate_llc(model, loss_fn, (x,), cfg, progress=False)
    finally:
        model.requires_grad_(False)
    return f"λ̂ {res.llc_hat:.3g}"


def m_decompose(row: Row) -> str:
    """SPD on the last MLP's weights, KL to the model's logits on the row's inputs (the function `mechscope decompose`
    runs; its PATH target tokenises 200k tokens of the standard library first, which alone takes half a minute)."""
    try:  # decompose() moved from the command's module to mechscope.decompose.run on main
        from mechscope.decompose.run import decompose
    except ImportError:
        from mechscope.cli.decompose import decompose
    from mechscope.decompose.config import SPDConfig
    from mechscope.decompose.toys import KnownModel

    n = 1 if row.is_lm else 64  # every batch is scored over the whole vocabulary at each of its 16 tokens
    x = row.inputs(2 * n)[:, :16] if row.is_lm else row.inputs(2 * n)
    kt = KnownModel(
        loaded(row).model,
        lambda step: x[:n],
        x[n:],
        str,
        None,
        output=lambda y: getattr(y, "logits", y),
        output_loss="kl",
    )
    cfg = SPDConfig(targets=(row.sites()["spd"],), C=2, steps=3, batch_size=64, ci_hidden=4, warmup_steps=0)
    res, *_ = decompose(kt, cfg, None, False)
    return f"{len(res['targets'])} targets, {res['alive']} alive"
