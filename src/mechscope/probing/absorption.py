"""First-letter absorption on a real model (Chanin et al. 2024; SAEBench's ``absorption_first_letter``), beside the
toy-model absorption of :mod:`mechscope.evals.absorption`.

Shapes: W words, d width at the site, n latents, L letters (26).

1. Words: tokens of the vocabulary that are one word, a space then ASCII letters (at least two), drawn with
   ``seed`` up to ``words``; split into train and test by a hash of the lower-cased word.
2. Prompts (SAEBench's): ``icl_examples`` lines "{w} has the first letter: W" of other training words, then
   "{word} has the first letter:"; the activation at the site is read at the word's token.
3. The probe: per letter, a logistic regression (balanced classes) on the training words' activations, letter vs
   the rest; u_L = its weight vector. A letter is scored only when its probe's F1 on the test words is at least
   ``min_probe_f1`` (SAEBench: 0.6).
4. The letter's main latents: k-sparse probes on the codes, latents ranked by mean(codes⁺) − mean(codes⁻) on the
   training words (positive: latents that fire *for* the letter), k = 1 … ``max_k``; k grows while the test F1 of the
   k-sparse probe rises by more than ``f1_jump`` (SAEBench: 0.03) over the last k kept, and the latents of the last k
   kept are the main latents (more than one: the letter's feature is split).
5. On each test word of the letter that the probe gets right (decision > 0), :func:`mechscope.evals.absorption.full_absorption`
   judges it absorbed: the main latents silent, and the latent projecting most onto u_L has cos(u_L, W_dec) ≥
   ``min_cos`` (SAEBench: 0.025) and ≥ ``min_share`` (0.4) of the activation's projection x·u_L.
6. Absorption rate of a letter = absorbed / probe true positives; the score is the mean over scored letters
   (SAEBench's ``mean_full_absorption_score``); beside it the pooled rate and the rate at which the main latents are
   silent on probe true positives (absorbed or not), as the toy metric reports its silent rates.

Where this departs from SAEBench: the main latents are ranked by the difference of class means (as in sparse
probing, :mod:`mechscope.probing.sparse`), where SAEBench ranks by the weights of an L1-penalised probe over all
latents; the probe is 26 one-vs-rest scikit-learn regressions where SAEBench trains 26 binary probes jointly in
torch; the word list is a seeded sample of the vocabulary (SAEBench takes every alphabetic token, with or without
the leading space), and prompts are right-padded to the longest in the batch (SAEBench needs equal lengths).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from mechscope.config import COUNT, check_ranges, in_range
from mechscope.data.text import _bos_id, _hash
from mechscope.evals.absorption import full_absorption
from mechscope.probing.concepts import LETTERS, WORD
from mechscope.probing.sparse import fit_probe, top_mean_difference
from mechscope.sites import resolve_sites, run_to_sites


@dataclass(frozen=True)
class LetterConfig:
    """The words, prompts and thresholds of first-letter absorption."""

    words: int = field(default=1200, metadata=COUNT)
    """Single-token words drawn from the vocabulary (train and test together); ≥ 1."""
    icl_examples: int = field(default=10, metadata=in_range(0, 1000))
    """Solved examples before each prompt's word (SAEBench: 10; 0: none); at most 1,000."""
    template: str = "{word} has the first letter:"
    """Prompt of one word (SAEBench's)."""
    word_test_fraction: float = 0.3
    """Share of the words held out (by a hash of the word) to pick main latents and measure absorption."""
    max_k: int = field(default=10, metadata=COUNT)
    """Largest k of the k-sparse probes that find a letter's main latents (SAEBench: 10)."""
    f1_jump: float = field(default=0.03, metadata=in_range(0, 1))
    """k grows while the k-sparse probe's test F1 rises by more than this (SAEBench: 0.03; 0: while it rises at
    all); in [0, 1]."""
    min_probe_f1: float = field(default=0.6, metadata=in_range(0, 1))
    """A letter is scored only when the activation probe's test F1 reaches this (SAEBench: 0.6; 0: every letter);
    in [0, 1]."""
    min_cos: float = field(default=0.025, metadata=in_range(-1, 1))
    """The absorbing latent's decoder row must have at least this cosine with the probe (SAEBench: 0.025; 0: any
    that is not opposed); in [-1, 1]."""
    min_share: float = field(default=0.4, metadata=in_range(0, 1))
    """The absorbing latent must carry at least this share of the activation's projection on the probe (SAEBench:
    0.4; 0: any share); in [0, 1]."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if "{word}" not in self.template:
            raise ValueError("template must contain {word}")
        if not 0.0 < self.word_test_fraction < 1.0:
            raise ValueError("word_test_fraction must lie strictly between 0 and 1")


def word_tokens(tokenizer: Any, words: int, seed: int) -> list[tuple[int, str]]:
    """(token id, word) of up to ``words`` vocabulary tokens that are a space then ≥ 2 ASCII letters, seeded."""
    found = []
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if len(text) >= 3 and WORD.fullmatch(text):
            found.append((tid, text[1:]))
    random.Random(seed).shuffle(found)
    return sorted(found[:words])


def letter_of(word: str) -> int:
    return LETTERS.index(word[0].lower())


def prompts(
    tokenizer: Any, words: list[tuple[int, str]], examples: list[str], cfg: LetterConfig, seed: int
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each word's prompt (BOS first when the tokenizer has one) and the position of the word in it.

    The word is its own vocabulary token, placed between the tokenised text before and after it."""
    rng = random.Random(seed)
    bos = _bos_id(tokenizer, "auto")
    head, tail = cfg.template.split("{word}", 1)
    out, where = [], []
    for _tid, word in words:
        shots = rng.sample([e for e in examples if e != word], min(cfg.icl_examples, max(len(examples) - 1, 0)))
        lines = "".join(f"{cfg.template.format(word=' ' + s)} {s[0].upper()}\n" for s in shots)
        before = tokenizer(lines + head, add_special_tokens=False).input_ids
        after = tokenizer(tail, add_special_tokens=False).input_ids
        ids = ([bos] if bos is not None else []) + before + [_tid] + after
        out.append(ids)
        where.append(len(ids) - len(after) - 1)
    return out, where


@torch.no_grad()
def word_activations(
    model: nn.Module, site: str, ids: list[list[int]], where: list[int], batch_size: int = 16
) -> Tensor:
    """[W, d] activations at ``site`` at each prompt's word position (prompts right-padded: a causal model's earlier
    positions do not see the padding)."""
    (resolved,) = resolve_sites(model, site)
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(ids), batch_size):
        part = ids[start : start + batch_size]
        T = max(map(len, part))
        batch = torch.tensor([p + [p[-1]] * (T - len(p)) for p in part], device=device)
        acts = run_to_sites(model, [resolved], input_ids=batch)[str(resolved)].float()
        pos = torch.tensor(where[start : start + batch_size], device=device)
        rows.append(acts[torch.arange(len(part), device=device), pos].cpu())
    return torch.cat(rows)


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float((pred & y).sum())
    return 2 * tp / max(float(pred.sum() + y.sum()), 1.0)


def letter_absorption(
    x_train: Tensor,
    letter_train: Tensor,
    x_test: Tensor,
    letter_test: Tensor,
    sae: Any,
    cfg: LetterConfig,
    probes: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """Steps 3–6 of the module docstring on word activations ``x_*`` [W, d] with letters ``letter_*`` [W] (indices
    into :data:`LETTERS`) and a dictionary ``sae`` (``encode`` [W, d] → [W, n], ``W_dec`` [n, d]). ``probes`` (letter →
    fitted probe) keeps the activation probes, which do not depend on the dictionary, across calls on the same words."""
    from sklearn.linear_model import LogisticRegression

    probes = {} if probes is None else probes

    with torch.no_grad():
        c_train, c_test = sae.encode(x_train).float(), sae.encode(x_test).float()
        W_dec = sae.W_dec.detach().float().cpu()
    c_train, c_test = c_train.cpu(), c_test.cpu()
    per_letter = []
    for L in sorted(set(letter_test.tolist()) & set(letter_train.tolist())):
        y_tr, y_te = (letter_train == L).numpy(), (letter_test == L).numpy()
        if y_tr.all():
            continue
        if L not in probes:
            probes[L] = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x_train.double().numpy(), y_tr)
        probe = probes[L]
        s_te = probe.decision_function(x_test.double().numpy())
        probe_f1 = _f1(s_te > 0, y_te)
        row: dict[str, Any] = {"letter": LETTERS[L], "test_words": int(y_te.sum()), "probe_f1": probe_f1}
        if probe_f1 < cfg.min_probe_f1:
            per_letter.append({**row, "scored": False})
            continue
        ranked = top_mean_difference(c_train, y_tr.astype(np.int64), cfg.max_k, signed=True)
        main, best = [], -1.0
        for k in range(1, cfg.max_k + 1):
            keep = ranked[:k]
            kp = fit_probe(c_train[:, keep], y_tr.astype(np.int64), 1.0, 1000)
            f1 = _f1(kp.predict(c_test[:, keep].double().numpy()) == 1, y_te)
            if f1 <= best + cfg.f1_jump:
                break
            main, best = keep.tolist(), f1
        tp = np.flatnonzero(y_te & (s_te > 0))
        u = torch.from_numpy(probe.coef_[0]).float()
        fa = full_absorption(x_test[tp], c_test[tp], W_dec, u, main, cfg.min_cos, cfg.min_share)
        per_letter.append(
            {
                **row,
                "scored": True,
                "main_latents": main,
                "main_f1": best,
                "probe_true_positives": len(tp),
                "absorbed": int(fa.absorbed.sum()),
                "silent": int(fa.silent.sum()),
                "absorption": float(fa.absorbed.float().mean()) if len(tp) else float("nan"),
                "absorbing_latents": sorted({int(j) for j in fa.top_latent[fa.absorbed].tolist()}),
            }
        )
    scored = [r for r in per_letter if r["scored"] and r["probe_true_positives"] > 0]
    tps = sum(r["probe_true_positives"] for r in scored)
    return {
        "letters_scored": len(scored),
        "mean_absorption": float(np.mean([r["absorption"] for r in scored])) if scored else float("nan"),
        "pooled_absorption": sum(r["absorbed"] for r in scored) / tps if tps else float("nan"),
        "silent_main": sum(r["silent"] for r in scored) / tps if tps else float("nan"),
        "mean_main_latents": float(np.mean([len(r["main_latents"]) for r in scored])) if scored else float("nan"),
        "probe_true_positives": tps,
        "letters": per_letter,
    }


class LetterData(NamedTuple):
    """Word activations at one site: [W_train, d], [W_train], [W_test, d], [W_test] (letters index LETTERS)."""

    x_train: Tensor
    letter_train: Tensor
    x_test: Tensor
    letter_test: Tensor


def letter_data(
    model: nn.Module, tokenizer: Any, site: str, cfg: LetterConfig, seed: int = 0, batch_size: int = 16
) -> LetterData:
    """Steps 1–2: draw the words, build their prompts, read their activations."""
    words = word_tokens(tokenizer, cfg.words, seed)
    test = np.array([_hash(w.lower()) < cfg.word_test_fraction * 2**64 for _, w in words])
    train_words = [w for (_, w), t in zip(words, test) if not t]
    ids, where = prompts(tokenizer, words, train_words, cfg, seed)
    x = word_activations(model, site, ids, where, batch_size)
    letters = torch.tensor([letter_of(w) for _, w in words])
    held = torch.from_numpy(test)
    return LetterData(x[~held], letters[~held], x[held], letters[held])
