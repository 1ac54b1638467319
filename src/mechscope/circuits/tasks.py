"""Clean/corrupted tasks for circuit discovery: the zoo's induction and parentheses models, and indirect-object
identification (IOI) on SmolLM2, all built offline.

Shapes: B examples, T positions, V logits per position.

Each task gives aligned clean and corrupted inputs (same shape, so positions match), a metric m (the
model's output → a scalar, mean over examples; what patching effects are measured in), a
:class:`~mechscope.task.Task` that scores per-example losses and the rock at the answer positions
(for faithfulness), and the positions ACDC's KL is taken at.

- ``induction`` (zoo:induction): clean = sequences drawn like the recipe's (a segment repeated); corrupted =
  uniformly random tokens (no repeat), so nothing can be copied. (Corrupting only the first copy leaves the
  second copy's tokens, hence the induction heads' queries, unchanged, and patching then cannot see the
  query path that mean ablation removes.)
  m = mean log p(next token) over the second-copy positions.
- ``parens`` (zoo:parens): clean = held-out balanced strings; corrupted = held-out unbalanced strings of the
  same length (so the padding lines up). m = mean (logit balanced − logit unbalanced) at [BEGIN].
  Faithfulness is measured on both (each with its own label): on balanced strings alone, a model ablated
  to the mean of balanced strings would be "perfect".
- ``ioi`` (SmolLM2): "When Mary and John went to the store, John gave a drink to" → " Mary". Corrupted = the
  same template with two other names (every name is one token, so lengths match). m = mean logit(IO) −
  logit(S) at the last position. The rock is the label distribution of the answers of a separate sample of
  2,000 prompts, less any that equals an evaluated prompt (the Task's training split: prompts and answers,
  fit, as every task's rock, by :class:`mechscope.evals.rock.Rock`).
- a user's own task from prompt pairs (:func:`pairs_task`, or a JSON/YAML file through :func:`load_pairs`):
  each :class:`PromptPair` is a clean prompt, a corrupted prompt of the same token length, the clean answer
  (one token) and, optionally, the wrong answer the corrupted prompt points to. m = mean logit(answer) −
  logit(wrong) at the last token (log p(answer) when no pair names a wrong answer), or any metric given.
  Every prompt has the same length (no padding: positions must align across the batch). A user's pairs
  have no training split, so the rock is fit on the pairs' own answers: in-sample, it is the strongest
  constant predictor on them, a stricter bar for "worse than the rock".

>>> task = pairs_task(model, tokenizer, [PromptPair("When Mary and John went out, John gave it to",
...                                                 "When Anna and Tom went out, Tom gave it to", " Mary", " John"), ...])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.circuits.patching import Metric
from mechscope.errors import UsageError
from mechscope.evals.splice import model_logits
from mechscope.models.loading import n_logits
from mechscope.task import IGNORE, Task


def logits_of(out: Any) -> Tensor:
    """The logits of a model's output (a tensor, or a Hugging Face output with ``.logits``), at least float32: a model
    running bf16/fp16 is scored in float32 (every metric, loss and KL reads its logits through here). Found by the one
    reader of model outputs, :func:`mechscope.evals.splice.model_logits`."""
    logits = model_logits(out)
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


@dataclass(frozen=True, eq=False)
class CircuitTask:
    """A clean/corrupted pair of batches with the metric and scoring of one behaviour."""

    name: str
    """Task name (``induction``, ``parens``, ``ioi``)."""
    clean: Tensor
    """[B, T] clean token ids."""
    corrupt: Tensor
    """[B, T] corrupted token ids (same shape: positions align)."""
    metric: Metric
    """Model output → scalar (mean over examples); effects are changes of it."""
    metric_name: str
    """The metric's formula in words."""
    scoring: Task
    """Per-example loss and rock at the answer positions (``scoring.loss(logits, targets)``)."""
    targets: Tensor
    """[B] or [B, S] the clean answers in ``scoring``'s format."""
    kl_positions: Tensor
    """[B, T] bool: where ACDC's KL(p_full ‖ p_circuit) is taken."""
    eval_inputs: Tensor | None = None
    """[E, T] where faithfulness is measured and mean/resample ablations are taken (None: the clean inputs).
    A classifier needs both classes here, or ablating everything to the mean of one class looks perfect."""
    eval_pairs: Tensor | None = None
    """[E, T] the corrupted partner of each eval input (for ``corrupt`` ablation; None: the corrupted inputs)."""
    eval_targets: Tensor | None = None
    """[E] or [E, S] the answers of the eval inputs (None: the clean answers)."""

    def to(self, device: torch.device | str) -> CircuitTask:
        """This task with its inputs, answers and positions on ``device`` (the model's: inputs follow the model)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    @property
    def evaluation(self) -> tuple[Tensor, Tensor, Tensor]:
        """(eval inputs, their corrupted partners, their answers)."""
        if self.eval_inputs is None:
            return self.clean, self.corrupt, self.targets
        return self.eval_inputs, self.eval_pairs, self.eval_targets  # type: ignore[return-value]

    def loss(self, out: Any) -> Tensor:
        """Per-example loss [E] of a model output on the eval inputs' answers."""
        return self.scoring.loss(logits_of(out), self.evaluation[2])

    def rock(self) -> Tensor:
        """Per-example loss [E] of the best constant predictor on the eval answers."""
        return self.scoring.rock(self.evaluation[2])


def _zoo(name: str, device: Any, dtype: Any) -> Any:
    from mechscope.models.resolve import resolve_model

    return resolve_model(f"zoo:{name}", device=device, dtype=dtype)


def induction_task(
    examples: int, seed: int = 1, *, device: Any = None, dtype: Any = None
) -> tuple[nn.Module, CircuitTask]:
    from mechscope.zoo.induction import sample

    subject = _zoo("induction", device, dtype)
    zm = subject.zoo
    cfg = zm.config
    g = torch.Generator().manual_seed(10_000 + seed)
    x, y, first, second = sample(examples, cfg, g)
    pad = torch.zeros(examples, 1, dtype=torch.bool)
    corrupt = torch.randint(0, cfg.vocab, x.shape, generator=g)
    targets = torch.where(second, y, IGNORE)
    scored = torch.cat([second, pad], 1)

    def metric(out: Any) -> Tensor:
        lg = logits_of(out)
        lp = lg[:, :-1].log_softmax(-1).gather(-1, y[..., None].clamp_min(0).to(lg.device))[..., 0]
        return (lp * second.to(lg.device)).sum() / second.sum()

    return subject.model, CircuitTask(
        "induction", x, corrupt, metric, "mean log p(next token) in the second copy", zm.task, targets, scored
    ).to(subject.device)


def parens_task(
    examples: int, seed: int = 1, *, device: Any = None, dtype: Any = None
) -> tuple[nn.Module, CircuitTask]:
    from mechscope.zoo.parens import PAD, is_balanced

    subject = _zoo("parens", device, dtype)
    zm = subject.zoo
    x = zm.task.val_inputs
    label = is_balanced(x)
    length = (x != PAD).sum(1)
    g = torch.Generator().manual_seed(seed)
    clean_rows, corrupt_rows = [], []
    unbalanced = {int(n): (label == 0).logical_and(length == n).nonzero()[:, 0].tolist() for n in length.unique()}
    for i in (label == 1).nonzero()[:, 0][torch.randperm(int(label.sum()), generator=g)].tolist():
        pool = unbalanced.get(int(length[i]), [])
        if pool:
            clean_rows.append(i)
            corrupt_rows.append(pool.pop())
        if len(clean_rows) == examples:
            break
    clean, corrupt = x[clean_rows], x[corrupt_rows]

    def metric(out: Any) -> Tensor:
        lg = logits_of(out)[:, 0]
        return (lg[:, 1] - lg[:, 0]).mean()

    kl = torch.zeros_like(clean, dtype=torch.bool)
    kl[:, 0] = True
    n = len(clean_rows)
    return subject.model, CircuitTask(
        "parens",
        clean,
        corrupt,
        metric,
        "mean logit(balanced) − logit(unbalanced) at [BEGIN]",
        zm.task,
        torch.ones(n, dtype=torch.long),
        kl,
        eval_inputs=torch.cat([clean, corrupt]),
        eval_pairs=torch.cat([corrupt, clean]),
        eval_targets=torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)]),
    ).to(subject.device)


NAMES = (
    "Mary",
    "John",
    "Tom",
    "James",
    "Anna",
    "Paul",
    "Sarah",
    "David",
    "Emma",
    "Mark",
    "Lisa",
    "Peter",
    "Kate",
    "Jack",
    "Alice",
    "Bob",
    "Laura",
    "Steve",
    "Rachel",
    "Mike",
    "Linda",
    "George",
    "Helen",
    "Frank",
)
PLACES = ("store", "park", "school", "office", "beach", "station", "market", "garden")
OBJECTS = ("drink", "book", "ball", "letter", "gift", "key", "pen", "bag")
TEMPLATE = "When {a} and {b} went to the {place}, {b} gave a {obj} to"


def ioi_prompts(tokenizer: Any, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(clean [n, T], corrupted [n, T], IO token [n], S token [n]) from :data:`TEMPLATE`; names that are not one
    token after a space are dropped so every prompt has the same length."""
    ids = {nm: tokenizer.encode(" " + nm, add_special_tokens=False) for nm in NAMES}
    names = [nm for nm, t in ids.items() if len(t) == 1]
    if len(names) < 4:
        raise UsageError(
            "the tokenizer splits almost every IOI name into several tokens; the ioi task needs single-token names"
        )
    rows: list[list[int]] = []
    io, s = [], []
    corrupt: list[list[int]] = []
    length = None
    while len(rows) < n:
        a, b, c, d = (names[i] for i in torch.randperm(len(names), generator=gen)[:4].tolist())
        place = PLACES[int(torch.randint(len(PLACES), (1,), generator=gen))]
        obj = OBJECTS[int(torch.randint(len(OBJECTS), (1,), generator=gen))]
        clean_ids = tokenizer.encode(TEMPLATE.format(a=a, b=b, place=place, obj=obj), add_special_tokens=False)
        corrupt_ids = tokenizer.encode(TEMPLATE.format(a=c, b=d, place=place, obj=obj), add_special_tokens=False)
        length = length or len(clean_ids)
        if len(clean_ids) != length or len(corrupt_ids) != length:
            continue
        rows.append(clean_ids)
        corrupt.append(corrupt_ids)
        io.append(ids[a][0])
        s.append(ids[b][0])
    return torch.tensor(rows), torch.tensor(corrupt), torch.tensor(io), torch.tensor(s)


def ioi_task(
    examples: int, seed: int = 1, model: Any = "smollm2", *, device: Any = None, dtype: Any = None
) -> tuple[nn.Module, CircuitTask]:
    from mechscope.models.resolve import language_model

    lm = language_model(model, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    clean, corrupt, io, s = ioi_prompts(lm.tokenizer, examples, g)
    train, _, train_io, _ = ioi_prompts(lm.tokenizer, 2000, torch.Generator().manual_seed(seed + 1000))
    fresh = ~(train[:, None] == clean[None]).all(-1).any(-1)  # a training prompt is never an evaluated one
    V = n_logits(lm.model)
    scoring = Task("ioi", train[fresh], train_io[fresh], clean, io, positions=(-1,), n_classes=V)

    def metric(out: Any) -> Tensor:
        last = logits_of(out)[:, -1]
        return (last.gather(1, io[:, None].to(last.device)) - last.gather(1, s[:, None].to(last.device))).mean()

    kl = torch.zeros_like(clean, dtype=torch.bool)
    kl[:, -1] = True
    return lm.model, CircuitTask(
        "ioi", clean, corrupt, metric, "mean logit(IO) − logit(S) at the last token", scoring, io, kl
    ).to(lm.device)


TASKS: dict[str, Callable[..., tuple[nn.Module, CircuitTask]]] = {
    "induction": induction_task,
    "parens": parens_task,
    "ioi": ioi_task,
}
"""task name → builder(examples, seed, *, device, dtype) returning (model, task); ioi also takes ``model``."""

DEFAULT_TASK = {"zoo:induction": "induction", "zoo:parens": "parens", "smollm2": "ioi"}
"""model spec → its default task."""


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted pair of a user's task."""

    clean: str
    """The clean prompt."""
    corrupt: str
    """The corrupted prompt: the same number of tokens, differing where the behaviour's input differs."""
    answer: str
    """The clean prompt's right next token (one token, with its leading space if the text has one)."""
    wrong: str = ""
    """The wrong answer (one token; typically what the corrupted prompt points to); empty: none."""


def _one_token(tokenizer: Any, text: str, what: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise UsageError(
            f"{what} {text!r} is {len(ids)} tokens ({ids}); an answer must be one token "
            "(give it the leading space it has after the prompt, or pick a shorter word)"
        )
    return int(ids[0])


def pairs_task(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PromptPair],
    metric: Metric | None = None,
    metric_name: str = "",
    name: str = "pairs",
) -> CircuitTask:
    """A :class:`CircuitTask` from a user's prompt pairs (see the module docstring); ``metric`` (model output →
    scalar) replaces the default logit difference, ``metric_name`` says what it is."""
    pairs = [p if isinstance(p, PromptPair) else PromptPair(*p) for p in pairs]
    if len(pairs) < 2:
        raise UsageError(
            f"a task needs at least 2 prompt pairs (faithfulness is measured over examples), got {len(pairs)}"
        )
    if len({bool(p.wrong) for p in pairs}) > 1:
        raise UsageError(
            "either every pair names a wrong answer (the metric is then the logit difference) or none does"
        )
    clean: list[list[int]] = []
    corrupt: list[list[int]] = []
    for i, p in enumerate(pairs):
        c, k = tokenizer.encode(p.clean), tokenizer.encode(p.corrupt)
        if len(c) != len(k):
            raise UsageError(
                f"pair {i}: the clean prompt is {len(c)} tokens and the corrupted one {len(k)}; patching "
                "aligns positions, so both prompts of a pair must be the same length (swap words of equal token length)"
            )
        if clean and len(c) != len(clean[0]):
            raise UsageError(
                f"pair {i} is {len(c)} tokens but pair 0 is {len(clean[0])}; every pair must be the same "
                "length (the pairs run as one batch without padding)"
            )
        clean.append(c)
        corrupt.append(k)
    answer = torch.tensor([_one_token(tokenizer, p.answer, f"pair {i}: answer") for i, p in enumerate(pairs)])
    wrong = (
        torch.tensor([_one_token(tokenizer, p.wrong, f"pair {i}: wrong answer") for i, p in enumerate(pairs)])
        if pairs[0].wrong
        else None
    )
    if metric is None:

        def metric(out: Any) -> Tensor:
            last = logits_of(out)[:, -1]
            right = last.gather(1, answer[:, None].to(last.device))
            if wrong is None:
                return (right - last.logsumexp(-1, keepdim=True)).mean()
            return (right - last.gather(1, wrong[:, None].to(last.device))).mean()

        metric_name = (
            "mean logit(answer) − logit(wrong) at the last token"
            if wrong is not None
            else "mean log p(answer) at the last token"
        )
    x = torch.tensor(clean)
    V = int(model.get_output_embeddings().weight.shape[0])  # type: ignore[operator]
    scoring = Task(name, x, answer, x, answer, positions=(-1,), n_classes=V)  # no other prompts: the rock is in-sample
    kl = torch.zeros_like(x, dtype=torch.bool)
    kl[:, -1] = True
    task = CircuitTask(name, x, torch.tensor(corrupt), metric, metric_name or "the given metric", scoring, answer, kl)
    return task.to(next(model.parameters()).device)


def load_pairs(path: str | Path) -> list[PromptPair]:
    """Prompt pairs from a JSON or YAML file: a list of ``{clean, corrupt, answer, wrong}`` objects, or an object
    whose ``pairs`` is that list (``wrong`` may be left out)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"pairs file {path} "
            + ("is a directory" if path.is_dir() else "does not exist")
            + "; pass a JSON or YAML file of {clean, corrupt, answer, wrong} pairs"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))  # JSON is YAML
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"pairs file {path} is not valid JSON/YAML text ({' '.join(str(e).split())[:200]})") from e
    rows = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise UsageError(
            f"pairs file {path}: expected a list of pairs (or an object with a 'pairs' list), got {type(rows).__name__}"
        )
    out = []
    keys = ("clean", "corrupt", "answer", "wrong")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"clean", "corrupt", "answer"} <= set(row) or set(row) - set(keys):
            raise UsageError(
                f"pairs file {path}, pair {i}: expected an object with keys clean, corrupt, answer "
                f"(and optionally wrong), got {row!r:.120}"
            )
        if not all(isinstance(row.get(k, ""), str) for k in keys):
            raise UsageError(f"pairs file {path}, pair {i}: every value must be a string (quote numbers)")
        out.append(PromptPair(**row))
    return out
