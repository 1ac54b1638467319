"""Scores of an explanation: how well a sentence picks out where a latent fires, beside a random and a constant
explanation (the rock of autointerp), with bootstrap intervals.

Each scorer of :data:`SCORERS` turns (explanation, :class:`~mechscope.explain.types.Evidence`, judge, rng) into
:class:`Trials`: one score per trial and a label (1 = the latent fires there, 0 = it does not); the scorer's number
is the AUROC of the scores against the labels (0.5 = chance, 1 = every positive above every negative).

- ``detection``: trials are the firing windows (top + quantile samples, label 1) and the non-firing windows
  (label 0); score = the judge's P(yes) that the text contains what the explanation describes.
- ``fuzzing``: trials are the firing windows twice, once with the truly activating tokens marked ``<<…>>`` (label 1)
  and once with as many randomly chosen non-activating tokens marked (label 0; tokens that are only whitespace are
  never chosen, a judge could not see them); score = P(yes) that the marked tokens fit the explanation. A window
  with no such token to mark is left out.
- ``embedding``: trials as in detection; score = cosine of the explanation's all-MiniLM-L6-v2 embedding with the
  window's (:mod:`mechscope.explain.embedding`; the judge is not used).

AUROC = P(s₁ > s₀) + ½ P(s₁ = s₀) over pairs of a positive and a negative (:func:`mechscope.anomaly.metrics.auroc`).
Interval: stratified percentile bootstrap: positives and negatives are resampled separately with replacement
``n_boot`` times; the interval is the 2.5th to 97.5th percentile of the resampled AUROCs. :func:`score_latent` uses
the same resamples (and, for fuzzing, the same decoy markings) for the true, random and constant explanations, so
the three are compared on the same trials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mechscope.anomaly.metrics import auroc
from mechscope.explain.types import Evidence, Example, Judge

CONSTANT = "text"
"""The constant explanation: one that says nothing about any latent."""

# The fixed question first and the explanation before the window: every prompt of one (explanation, scorer) starts
# with the same tokens, which the local judge runs once per batch (mechscope.explain.judge), so a prompt costs only
# its window and the chat template's closing tokens.
DETECTION_PROMPT = (
    "Answer Yes or No: does the text contain what the description names?\n"
    "Description: {explanation}\n"
    'Text: """{text}"""'
)
FUZZING_PROMPT = (
    "Answer Yes or No: do the tokens marked <<like this>> in the text fit the description?\n"
    "Description: {explanation}\n"
    'Text: """{text}"""'
)


@dataclass(frozen=True)
class Trials:
    """One scorer's trials for one explanation: ``scores`` float64 [N] and ``labels`` int [N] (1 = firing)."""

    scores: np.ndarray
    labels: np.ndarray

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(negative scores, positive scores)."""
        return self.scores[self.labels == 0], self.scores[self.labels == 1]


def firing(evidence: Evidence) -> tuple[Example, ...]:
    """The windows where the latent fires: the top windows, then the quantile samples."""
    return evidence.top + evidence.quantiles


def trial_windows(evidence: Evidence, n: int, rng: np.random.Generator) -> Evidence:
    """The windows scored: ``n`` firing windows drawn at random from the quantile samples (topped up at random from
    the top windows when there are fewer; the explainer is shown the top windows first, so the quantile samples are
    the ones it has not seen when its ``examples`` ≤ the evidence's ``top``), as ``quantiles``, and the first ``n``
    non-firing windows; ``top`` is left empty. Each scorer then asks 2 × ``n`` prompts per explanation at most."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")

    def draw(pool: tuple[Example, ...], k: int) -> list[Example]:
        return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]

    chosen = draw(evidence.quantiles, n)
    chosen += draw(evidence.top, n - len(chosen)) if len(chosen) < n else []
    return Evidence(evidence.latent, (), tuple(chosen), evidence.negatives[:n])


def _two_classes(evidence: Evidence, positives: int, negatives: int, what: str) -> None:
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"evidence for latent {evidence.latent} gives {positives} positive and {negatives} negative {what}; "
            "AUROC needs both (evidence.top/quantiles must hold firing windows, evidence.negatives non-firing ones)"
        )


def marked(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """The text with each run of marked tokens wrapped in ``<<`` ``>>`` (a run's leading spaces stay outside, unless
    its first token is nothing but spaces)."""
    out, run, inside = [], "", False
    for tok, m in zip(tokens, marks):
        if m and not inside:
            stripped = tok.lstrip() or tok
            out.append(tok[: len(tok) - len(stripped)])
            run, inside = stripped, True
        elif m:
            run += tok
        else:
            if inside:
                out.append(f"<<{run}>>")
                inside = False
            out.append(tok)
    if inside:
        out.append(f"<<{run}>>")
    return "".join(out)


def detection(explanation: str, evidence: Evidence, judge: Judge, rng: np.random.Generator) -> Trials:
    """Firing vs non-firing windows, scored by P(yes) to "does this text contain what the explanation names"."""
    pos, neg = firing(evidence), evidence.negatives
    _two_classes(evidence, len(pos), len(neg), "windows")
    prompts = [DETECTION_PROMPT.format(explanation=explanation, text=e.text) for e in pos + neg]
    return Trials(np.asarray(judge.p_yes(prompts), np.float64), np.r_[np.ones(len(pos)), np.zeros(len(neg))])


def fuzzing(explanation: str, evidence: Evidence, judge: Judge, rng: np.random.Generator) -> Trials:
    """Each firing window with its activating tokens marked (label 1) and with as many random non-activating,
    non-blank tokens marked (label 0), scored by P(yes) to "do the marked tokens fit the explanation"."""
    right, decoys = [], []
    for e in firing(evidence):
        acts = np.asarray(e.acts)
        visible = np.array([bool(t.strip()) for t in e.tokens], dtype=bool)
        on, off = np.flatnonzero(acts > 0), np.flatnonzero((acts <= 0) & visible)
        if len(on) == 0 or len(off) == 0:
            continue
        fake = np.zeros(len(acts), bool)
        fake[rng.choice(off, size=min(len(on), len(off)), replace=False)] = True
        right.append(marked(e.tokens, (acts > 0).tolist()))
        decoys.append(marked(e.tokens, fake.tolist()))
    _two_classes(evidence, len(right), len(decoys), "markings (firing windows with a non-activating token)")
    prompts = [FUZZING_PROMPT.format(explanation=explanation, text=t) for t in right + decoys]
    return Trials(np.asarray(judge.p_yes(prompts), np.float64), np.r_[np.ones(len(right)), np.zeros(len(decoys))])


def embedding(explanation: str, evidence: Evidence, judge: Judge, rng: np.random.Generator) -> Trials:
    """Firing vs non-firing windows, scored by the cosine of their embedding with the explanation's."""
    from mechscope.explain.embedding import default_encoder

    pos, neg = firing(evidence), evidence.negatives
    _two_classes(evidence, len(pos), len(neg), "windows")
    vecs = default_encoder().embed([explanation] + [e.text for e in pos + neg])
    return Trials((vecs[1:] @ vecs[0]).astype(np.float64), np.r_[np.ones(len(pos)), np.zeros(len(neg))])


@dataclass(frozen=True)
class Scorer:
    """One scorer: ``trials`` builds the scored trials; calling it gives their AUROC."""

    name: str
    trials: Callable[[str, Evidence, Judge, np.random.Generator], Trials]
    """(explanation, evidence, judge, rng) → :class:`Trials`."""
    uses_judge: bool
    """Whether it asks the judge (``embedding`` does not)."""

    def __call__(self, explanation: str, evidence: Evidence, judge: Judge, rng: np.random.Generator) -> float:
        neg, pos = self.trials(explanation, evidence, judge, rng).split()
        return auroc(neg, pos)


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (
        Scorer("detection", detection, True),
        Scorer("fuzzing", fuzzing, True),
        Scorer("embedding", embedding, False),
    )
}
"""Every scorer by name."""


def bootstrap_auroc(trials: Trials, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [n_boot]: the AUROC of ``n_boot`` stratified resamples (positives and negatives each drawn with
    replacement, as many as there are). With C[i, j] = 1, ½, 0 as positive i scores above, equal to, below negative
    j, and w, v the times each positive and negative is drawn: AUROC_b = wᵀ C v / (n₁ n₀)."""
    neg, pos = trials.split()
    n0, n1 = len(neg), len(pos)
    c = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # [n1, n0]
    w = rng.multinomial(n1, np.full(n1, 1 / n1), size=n_boot).astype(np.float64)  # [B, n1]
    v = rng.multinomial(n0, np.full(n0, 1 / n0), size=n_boot).astype(np.float64)  # [B, n0]
    return np.einsum("bi,ij,bj->b", w, c, v) / (n1 * n0)


@dataclass(frozen=True)
class Interval:
    """An AUROC and its 95% percentile-bootstrap interval."""

    auroc: float
    low: float
    high: float


def _interval(trials: Trials, n_boot: int, seed: int) -> Interval:
    neg, pos = trials.split()
    boots = bootstrap_auroc(trials, n_boot, np.random.default_rng(seed))
    return Interval(auroc(neg, pos), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))


@dataclass(frozen=True)
class ScorerResult:
    """One scorer's AUROC for the true, a random and the constant explanation."""

    true: Interval
    random: Interval
    constant: Interval
    positives: int
    """Trials labelled firing."""
    negatives: int
    """Trials labelled not firing."""

    @property
    def beats_random(self) -> bool:
        """Whether the true explanation's interval lies wholly above the random explanation's AUROC (its point):
        ``true.low > random.auroc``."""
        return self.true.low > self.random.auroc


@dataclass(frozen=True)
class LatentScore:
    """Every requested scorer's result for one latent's explanation."""

    latent: int
    explanation: str
    random_explanation: str
    """The other latent's explanation drawn as the random baseline."""
    constant_explanation: str
    scores: dict[str, ScorerResult]
    """Scorer name → result."""

    @property
    def beats_random(self) -> bool:
        """Whether the explanation beats the random one on every scorer (see :attr:`ScorerResult.beats_random`);
        a latent for which this is False is *unexplained*."""
        return all(r.beats_random for r in self.scores.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (read back by :meth:`from_json`)."""
        return {
            "latent": self.latent,
            "explanation": self.explanation,
            "random_explanation": self.random_explanation,
            "constant_explanation": self.constant_explanation,
            "beats_random": self.beats_random,
            "scores": {n: {**asdict(r), "beats_random": r.beats_random} for n, r in self.scores.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatentScore:
        scores = {
            n: ScorerResult(
                Interval(**r["true"]),
                Interval(**r["random"]),
                Interval(**r["constant"]),
                int(r["positives"]),
                int(r["negatives"]),
            )
            for n, r in d["scores"].items()
        }
        return cls(int(d["latent"]), d["explanation"], d["random_explanation"], d["constant_explanation"], scores)


def score_latent(
    evidence: Evidence,
    explanation: str,
    others: Sequence[str],
    judge: Judge,
    scorers: Sequence[str] = tuple(SCORERS),
    rng: np.random.Generator | None = None,
    n_boot: int = 1000,
    constant: str = CONSTANT,
) -> LatentScore:
    """Score ``explanation`` of ``evidence``'s latent with each of ``scorers`` (names in :data:`SCORERS`), beside a
    random explanation (one of ``others``, other latents' explanations, drawn by ``rng``; those equal to
    ``explanation`` are skipped) and the ``constant`` one, each with a bootstrap interval of ``n_boot`` resamples.
    The three explanations share the trials' decoys and the bootstrap's resamples (seeds drawn once per scorer)."""
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown or not scorers:
        raise ValueError(f"scorers must be names among {', '.join(SCORERS)}; got {list(scorers)!r}")
    if n_boot <= 0:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    rng = np.random.default_rng(0) if rng is None else rng
    pool = [o for o in others if o.strip() and o != explanation]
    if not pool:
        raise ValueError("others must hold at least one explanation (of another latent) different from explanation")
    random_expl = pool[int(rng.integers(len(pool)))]
    results = {}
    for name in scorers:
        scorer = SCORERS[name]
        seed = int(rng.integers(2**62))
        trials = {
            which: scorer.trials(text, evidence, judge, np.random.default_rng(seed))
            for which, text in (("true", explanation), ("random", random_expl), ("constant", constant))
        }
        labels = trials["true"].labels
        results[name] = ScorerResult(
            **{which: _interval(t, n_boot, seed + 1) for which, t in trials.items()},
            positives=int(labels.sum()),
            negatives=int((labels == 0).sum()),
        )
    return LatentScore(evidence.latent, explanation, random_expl, constant, results)


def _mean_interval(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict[str, float]:
    """The mean of ``values`` with the 2.5–97.5 percentiles of the mean over ``n_boot`` resamples of them."""
    boots = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return {
        "mean": float(values.mean()),
        "low": float(np.percentile(boots, 2.5)),
        "high": float(np.percentile(boots, 97.5)),
    }


def summarise(scores: Sequence[LatentScore], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Over latents: for each scorer, the mean AUROC of the true, random and constant explanations, each with a
    bootstrap interval over latents (``n_boot`` resamples, seeded), and the share of latents whose explanation beats
    the random one on that scorer; ``beats_random``: the share that beat it on every scorer they were scored with."""
    if not scores:
        raise ValueError("scores is empty; there is nothing to summarise")
    rng = np.random.default_rng(seed)
    names = sorted({n for s in scores for n in s.scores})
    per: dict[str, Any] = {}
    for name in names:
        rows = [s.scores[name] for s in scores if name in s.scores]
        per[name] = {
            which: _mean_interval(np.array([getattr(r, which).auroc for r in rows]), n_boot, rng)
            for which in ("true", "random", "constant")
        }
        per[name] |= {"latents": len(rows), "beats_random": float(np.mean([r.beats_random for r in rows]))}
    return {"latents": len(scores), "beats_random": float(np.mean([s.beats_random for s in scores])), "scorers": per}
