"""Coverage table: every method of mechscope, end to end, on a tiny random model of every family.

    .venv/bin/python scripts/coverage.py      # rewrites docs/coverage.md, prints one JSON line

(With arguments it is one worker of ``run_table(..., workers=N)``: see :func:`_worker`.)

Rows are the models of tests/helpers_families.py and tests/helpers_coverage.py: one per Hugging Face family
(built offline from transformers' config classes over the embedded SmolLM2's tokenizer, saved with
save_pretrained), a stub of TransformerLens's HookedTransformer, and a plain ``nn.Module`` classifier. Columns are the methods, each one short run through the
``mechscope`` command (in process) where the command takes the model, else through the public Python entry
point. A cell is

- ``ok``: the run finished; one sanity number is shown,
- ``refused``: mechscope raised its own error (MechscopeError / UsageError) naming the model's family or class,
- ``FAIL``: anything else — a crash, a non-zero exit, or a refusal that does not say which model it refuses,
- ``blocked``: the run needs the output of a cell of its row that did not finish (harvest, train).

tests/e2e/test_coverage.py runs the same table (:func:`run_table`) and fails on a FAIL cell that is not a known
crash, on a known crash that no longer fails, and when docs/coverage.md no longer matches.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' model builders (tests.helpers_families, tests.helpers_coverage)
from mechscope.atomic import atomic_write_bytes  # noqa: E402
from mechscope.errors import MechscopeError  # noqa: E402
from tests import helpers_coverage as models  # noqa: E402

DOC = ROOT / "docs" / "coverage.md"
HF_ROWS = {
    "llama": "Llama (SmolLM2)",
    "gpt2": "GPT-2",
    "gpt_neox": "GPT-NeoX (Pythia)",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3",
    "qwen2": "Qwen 2",
    "qwen3": "Qwen 3",
    "mistral": "Mistral",
    "phi3": "Phi-3",
    "olmo2": "OLMo 2",
    "phi": "Phi",
}
"""tests.helpers_families.SPECS name → row label."""
ROWS = {**HF_ROWS, "transformer_lens": "TransformerLens (stub)", "nn_module": "plain nn.Module"}
METHODS = (
    "sites",
    "harvest",
    "train",
    "evaluate",
    "report",
    "frontier",
    "scrub",
    "circuit-atp",
    "circuit-eap",
    "circuit-acdc",
    "graph",
    "detect",
    "llc",
    "decompose",
)
NEEDS = {"train": "harvest", "evaluate": "train", "report": "train", "frontier": "train", "graph": "harvest"}
"""method → the method of the same row whose output it reads."""

# One small harvest for every row: the flags of `mechscope harvest` and the fields of HarvestConfig/TextCorpusConfig.
HARVEST = {"tokens": 2048, "val_tokens": 512, "batch_contexts": 8, "shard_contexts": 64}
CORPUS = {"context_length": 32, "max_tokens": 20_000, "val_fraction": 0.3}
TRAIN = ["--latents", "64", "--k", "4", "--steps", "20", "--batch-size", "64", "--warmup-steps", "2", "--no-progress"]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def _flags(settings: dict[str, Any]) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


@dataclass
class Cell:
    """One (row, method) result."""

    status: str
    """ok | refused | FAIL | blocked."""
    text: str
    """The sanity number (ok), the one-line message (refused, FAIL) or what is missing (blocked)."""
    seconds: float = 0.0
    """Wall-clock seconds the cell took."""
    cpu_seconds: float = 0.0
    """CPU seconds of this process during the cell (the machine may be shared)."""

    def __str__(self) -> str:
        return f"{self.status}: {self.text}" if self.text else self.status


# --- the rows ------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One model and what its cells share: its folder (Hugging Face rows), the loaded model, and outputs of
    earlier cells (store, SAE)."""

    name: str
    work: Path
    tokenizer: Any
    contexts: Tensor
    """[N, T] token contexts of the small text corpus (the same for every language model)."""
    folder: Path | None = None
    model: nn.Module | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def is_hf(self) -> bool:
        return self.folder is not None

    @property
    def is_lm(self) -> bool:
        return self.name != "nn_module"

    def names(self) -> tuple[str, ...]:
        """How a refusal may name this model: its model_type, class and row label."""
        mt = getattr(getattr(self.model, "config", None), "model_type", None)
        return tuple(n for n in (mt, self.name, type(self.model).__name__, ROWS[self.name]) if n)

    def sites(self) -> dict[str, Any]:
        """Site names for the residual stream after the last block and each MLP's input and output."""
        if self.name == "transformer_lens":
            return {
                "resid": "blocks.1.hook_resid_post",
                "mlp_in": ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"],
                "mlp_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
                "spd": "blocks.1.mlp*",
            }
        if self.name == "nn_module":
            return {"resid": "fc2", "mlp_in": ["fc1:input", "fc2:input"], "mlp_out": ["fc1", "fc2"], "spd": "fc2"}
        return {
            "resid": "resid_post.1",
            "mlp_in": ["mlp_in.0", "mlp_in.1"],
            "mlp_out": ["mlp_out.0", "mlp_out.1"],
            "spd": "*.1.mlp.*",
        }

    def inputs(self, n: int, seed: int = 0) -> Tensor:
        """n inputs the model takes: text contexts, or N(0, 1) vectors for the classifier."""
        if self.is_lm:
            return self.contexts[seed * n : (seed + 1) * n]
        return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        out = model(x)
        return out.logits if hasattr(out, "logits") else out


def _text_contexts(tokenizer: Any) -> Tensor:
    from mechscope.data.text import TextCorpusConfig, build_contexts
    from tests.harness import SMALL_TEXT

    return build_contexts(tokenizer, TextCorpusConfig(source=SMALL_TEXT, **CORPUS)).train


def make_row(name: str, work: Path, tokenizer: Any, contexts: Tensor) -> Row:
    """Build (and for Hugging Face families save and reload, as a user would) the row's model."""
    from mechscope.models import load_model

    row = Row(name, work, tokenizer, contexts)
    work.mkdir(parents=True, exist_ok=True)
    if name in HF_ROWS:
        row.folder = models.save(name, work / "model", tokenizer)
        row.model = load_model(str(row.folder)).model
    elif name == "transformer_lens":
        row.model = models.hooked_transformer(len(tokenizer))
    else:
        row.model = models.mlp_classifier()
    return row


def loaded(row: Row) -> Any:
    """The row's model as a :class:`mechscope.models.LoadedModel` (what the Python entry points take)."""
    from mechscope.models import LoadedModel, load_model

    if row.is_hf:
        return load_model(str(row.folder))
    return LoadedModel(row.model, row.tokenizer, row.name)


# --- running one cell ----------------------------------------------------------------------------------------------


class _NonZeroExit(RuntimeError):
    pass


def cli(command: str, *argv: Any) -> dict[str, Any]:
    """``mechscope COMMAND ARGV --json`` in this process; its JSON. A MechscopeError propagates (the command line
    would print it as its one-line error); a rejected flag or a non-zero exit code is :class:`_NonZeroExit`."""
    from mechscope.cli import command_parser

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = command_parser(command).parse_args([str(a) for a in argv] + ["--json"])
            rc = int(args._run(args) or 0)
        except SystemExit as e:  # argparse refused a flag
            rc = e.code if isinstance(e.code, int) else 2
    if rc:
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        raise _NonZeroExit(f"mechscope {command} exited {rc}: {last}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def names_model(message: str, names: tuple[str, ...]) -> bool:
    """Whether ``message`` names one of ``names`` as a word of its own (not inside another word)."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message, re.IGNORECASE) for n in names)


def run_cell(row: Row, method: str, results: dict[str, Cell]) -> Cell:
    """Run one cell and classify its outcome."""
    need = NEEDS.get(method)
    if need and results[need].status == "blocked":
        return Cell("blocked", results[need].text)
    if need and results[need].status != "ok":
        return Cell("blocked", f"needs {need} ({results[need].status})")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            text = CELLS[method](row)
        cell = Cell("ok", text)
    except MechscopeError as e:
        msg = _first_line(str(e)).replace(str(row.work), "<tmp>")
        cell = (
            Cell("refused", msg)
            if names_model(msg, row.names())
            else Cell("FAIL", f"{type(e).__name__} not naming the model: {msg}")
        )
    except Exception as e:  # noqa: BLE001 — every crash is a cell of the table
        cell = Cell("FAIL", f"{type(e).__name__}: {_first_line(str(e)).replace(str(row.work), '<tmp>')}")
    cell.seconds, cell.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return cell


# --- the methods ---------------------------------------------------------------------------------------------------


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
            *_flags(HARVEST),
            *_flags(CORPUS),
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


def _circuit(row: Row, method: str) -> str:
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


CELLS: dict[str, Callable[[Row], str]] = {
    "sites": m_sites,
    "harvest": m_harvest,
    "train": m_train,
    "evaluate": m_evaluate,
    "report": m_report,
    "frontier": m_frontier,
    "scrub": m_scrub,
    "circuit-atp": lambda r: _circuit(r, "atp"),
    "circuit-eap": lambda r: _circuit(r, "eap"),
    "circuit-acdc": lambda r: _circuit(r, "acdc"),
    "graph": m_graph,
    "detect": m_detect,
    "llc": m_llc,
    "decompose": m_decompose,
}
assert tuple(CELLS) == METHODS


# --- the table -----------------------------------------------------------------------------------------------------


def run_table(
    work: Path,
    rows: tuple[str, ...] = tuple(ROWS),
    methods: tuple[str, ...] = METHODS,
    log: Callable[[str], None] | None = None,
    workers: int = 1,
) -> dict[str, dict[str, Cell]]:
    """row → method → :class:`Cell`, every model built and every method run under ``work``.

    ``workers`` > 1 splits the rows round-robin over that many processes (this script run with ``--rows``; each
    process uses one thread, the rows are independent), and gives the same table in the same row order."""
    if workers > 1:
        return _run_in_processes(work, rows, methods, workers)
    from mechscope.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster and steadier
    try:
        tokenizer = load_model("smollm2").tokenizer
        contexts = _text_contexts(tokenizer)
        table: dict[str, dict[str, Cell]] = {}
        for i, name in enumerate(rows):
            try:  # the folder is not named after the model: a message naming a path does not name the model
                with contextlib.redirect_stderr(io.StringIO()):  # transformers' progress bars
                    row = make_row(name, work / f"row{i:02d}", tokenizer, contexts)
            except Exception as e:  # noqa: BLE001 — a model that cannot be built fails its whole row
                table[name] = {
                    m: Cell("FAIL", f"building the model: {type(e).__name__}: {_first_line(str(e))}") for m in methods
                }
                continue
            table[name] = {}
            for method in methods:
                cell = table[name][method] = run_cell(row, method, table[name])
                if log:
                    log(f"{name:<16} {method:<12} {cell.seconds:6.1f} s ({cell.cpu_seconds:5.1f} CPU s)  {cell}")
        return table
    finally:
        torch.set_num_threads(threads)


def _run_in_processes(
    work: Path, rows: tuple[str, ...], methods: tuple[str, ...], workers: int
) -> dict[str, dict[str, Cell]]:
    """:func:`run_table` over ``workers`` child processes, each writing its part of the table as JSON."""
    groups = [rows[i::workers] for i in range(workers) if rows[i::workers]]
    procs = []
    for i, group in enumerate(groups):
        part = work / f"part{i}"
        part.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rows", ",".join(group)]
        cmd += ["--methods", ",".join(methods), "--work", str(part), "--cells", str(part / "cells.json")]
        with open(part / "stderr.txt", "w") as err:  # a file, not a pipe: a full pipe would stall the worker
            procs.append((part, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)))
    parts: dict[str, dict[str, Cell]] = {}
    for part, proc in procs:
        if proc.wait() != 0:
            err = (part / "stderr.txt").read_text()[-4000:]
            raise RuntimeError(f"coverage worker in {part} exited {proc.returncode}:\n{err}")
        cells = json.loads((part / "cells.json").read_text())
        parts.update({r: {m: Cell(**c) for m, c in row.items()} for r, row in cells.items()})
    return {r: parts[r] for r in rows}


def statuses(table: dict[str, dict[str, Cell]]) -> dict[tuple[str, str], str]:
    return {(r, m): c.status for r, cells in table.items() for m, c in cells.items()}


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(table: dict[str, dict[str, Cell]], seconds: float, cpu_seconds: float) -> str:
    """docs/coverage.md: the header, the legend and one table row per model."""
    import transformers

    methods = list(next(iter(table.values())))
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    counts = {s: sum(1 for st in statuses(table).values() if st == s) for s in ("ok", "refused", "FAIL", "blocked")}
    lines = [
        "# Coverage: every method on every family",
        "",
        "Written by `scripts/coverage.py` (checked by `tests/e2e/test_coverage.py`; re-run the script after a change that "
        "moves a cell). Each language model is tiny and random (2 layers, width 32, SmolLM2's tokenizer and vocabulary), "
        "built offline from transformers' config classes and saved with `save_pretrained`; the TransformerLens row is "
        "a stub with TransformerLens's module names and forward (`tests/helpers_coverage.py`), not the package; the plain "
        "`nn.Module` is a 16 → 32 → 32 → 4 ReLU classifier of vectors.",
        "",
        f"- date: {datetime.date.today().isoformat()}; commit: {_commit()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"the table took {seconds:.0f} s ({cpu_seconds:.0f} CPU-seconds, one thread)",
        f"- cells: {counts['ok']} ok, {counts['refused']} refused, {counts['FAIL']} FAIL, {counts['blocked']} blocked",
        "",
        "**ok**: the run finished (one sanity number). **refused**: mechscope's own one-line error naming the model's "
        "family or class. **FAIL**: a crash, a non-zero exit, or a refusal that does not name the model — a defect. "
        "**blocked**: needs the store (harvest) or SAE (train) of its row, which did not finish.",
        "",
        "Methods: sites (every alias captured; max |resid_post − resid_pre − attn_out − mlp_out|), harvest (`mechscope "
        "harvest`, 2k tokens of the email package's sources), train (`mechscope train`, TopK, 20 steps), evaluate "
        "(`mechscope evaluate`: splice and baselines), report (`mechscope report`), frontier (`mechscope frontier`, "
        "encoder and OMP), scrub (`mechscope scrub`: the last MLP's output resampled), circuit-* (`mechscope circuit "
        "--task ioi --method atp|eap|acdc`), graph (`mechscope graph` over mlp_in.L → mlp_out.L transcoders trained "
        "by `mechscope train`), detect (`make_detector('mahalanobis')` fit and score: text vs random tokens; the "
        "command runs only its own benchmarks), llc (`estimate_llc`, 2 chains of 8 SGLD steps; the command takes no "
        "Hugging Face folder), decompose (`mechscope.cli.decompose.decompose`, the function behind `mechscope "
        "decompose`: SPD of the last MLP, 3 steps; the command's PATH target first tokenises 200k tokens of the "
        "standard library, about 30 s a model). The two rows outside the family table run the Python functions "
        "the commands call, with the model object.",
        "",
        "| model | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, cells in table.items():
        lines.append(f"| {ROWS[name]} | " + " | ".join(esc(str(cells[m])) for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _worker(argv: list[str]) -> int:
    """One process of :func:`_run_in_processes`: ``--rows A,B --methods M,N --work DIR --cells FILE``."""
    opts = dict(zip(argv[0::2], argv[1::2]))
    table = run_table(Path(opts["--work"]), tuple(opts["--rows"].split(",")), tuple(opts["--methods"].split(",")))
    cells = {r: {m: asdict(c) for m, c in row.items()} for r, row in table.items()}
    atomic_write_bytes(Path(opts["--cells"]), json.dumps(cells).encode())
    return 0


def main() -> int:
    if len(sys.argv) > 1:
        return _worker(sys.argv[1:])
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="mechscope-coverage-") as tmp:
        table = run_table(Path(tmp), log=lambda s: print(s, file=sys.stderr))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    atomic_write_bytes(DOC, markdown(table, seconds, cpu).encode())
    fails = {f"{r}/{m}": c.text for r, cells in table.items() for m, c in cells.items() if c.status == "FAIL"}
    print(
        json.dumps(
            {
                "doc": str(DOC),
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu, 1),
                "fail": fails,
                "counts": {s: list(statuses(table).values()).count(s) for s in ("ok", "refused", "FAIL", "blocked")},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
