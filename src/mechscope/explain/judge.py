"""A local causal language model as a yes/no :class:`~mechscope.explain.types.Judge`.

``HFJudge("smollm2").p_yes(prompts)`` wraps each prompt in the model's chat template as one user turn, runs one
forward pass per batch of prompts (left-padded, so every prompt's last token sits at the last position) and reads
the next-token distribution p at that position:

    P(yes) = Σ_{t ∈ yes_ids} p[t],  P(no) = Σ_{t ∈ no_ids} p[t],  score = P(yes) / (P(yes) + P(no)).

The answer tokens are every spelling of the word in :data:`YES` / :data:`NO` that the tokenizer encodes as a single
token (for SmolLM2-135M-Instruct: "Yes" 10539, " Yes" 9230, "yes" 10407, " yes" 9805; "No" 5230, " No" 2838,
"no" 4607, " no" 787; "YES" is two tokens there and left out, "NO" is 13465).

This departs from delphi, whose scorers let the model *generate* an answer (a list of 0/1 labels) and parse it:
one forward pass gives a graded score, which AUROC needs (a parsed 0/1 gives one point on the ROC curve), it is
deterministic (no sampling, no parsing failures), and it costs one forward per prompt instead of a generation.
"""

from __future__ import annotations

from typing import Any

import torch

from mechscope.explain.chat import chat_turn, pad_id

YES = ("Yes", " Yes", "yes", " yes", "YES", " YES")
"""Spellings of the positive answer; those the tokenizer encodes as one token are summed."""
NO = ("No", " No", "no", " no", "NO", " NO")
"""Spellings of the negative answer; those the tokenizer encodes as one token are summed."""


def answer_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    """The ids of the spellings in ``words`` that ``tokenizer`` encodes as exactly one token (no special tokens)."""
    ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
    found = sorted({i[0] for i in ids if len(i) == 1})
    if not found:
        raise ValueError(f"yes/no: the tokenizer encodes none of {words!r} as a single token; name other spellings")
    return found


class HFJudge:
    """A Hugging Face causal LM (anything :func:`mechscope.models.resolve.language_model` loads) that answers
    yes/no questions with a probability.

    ``model``: a spec (default ``smollm2``, the embedded SmolLM2-135M-Instruct) or a loaded
    :class:`~mechscope.models.LoadedModel`; ``batch_size``: prompts per forward pass; ``system``: a system message
    (None keeps the chat template's own default, if any); ``yes`` / ``no``: the spellings of the two answers
    (:func:`answer_ids` keeps those that are one token).
    """

    def __init__(
        self,
        model: Any = "smollm2",
        batch_size: int = 16,
        system: str | None = None,
        device=None,
        yes: tuple[str, ...] = YES,
        no: tuple[str, ...] = NO,
    ):
        from mechscope.models.resolve import language_model

        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lm = model if hasattr(model, "tokenizer") else language_model(model, device=device)
        self.batch_size = batch_size
        self.system = system
        tok = self.lm.tokenizer
        self.yes_ids = answer_ids(tok, yes)
        self.no_ids = answer_ids(tok, no)
        self.pad_id = pad_id(tok)

    def _ids(self, prompt: str) -> list[int]:
        """The prompt as one user turn with the assistant's turn opened (plain text where there is no template)."""
        tok = self.lm.tokenizer
        text = chat_turn(tok, prompt, self.system)
        if text is not None:
            return tok.encode(text, add_special_tokens=False)
        return tok.encode(prompt + "\nAnswer:")

    @torch.no_grad()
    def p_yes(self, prompts: list[str]) -> list[float]:
        """For each prompt, P(yes) / (P(yes) + P(no)) of the next token after the opened answer, in [0, 1]."""
        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            rows = [self._ids(p) for p in prompts[start : start + self.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):  # left padding: the last real token of every row is at position -1
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
            # position ids from the mask, so a left-padded row is placed as it would be alone
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            dev = self.lm.device
            logits = self.lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)).logits[
                :, -1
            ]
            probs = logits.double().softmax(-1)  # [B, vocab]
            yes = probs[:, self.yes_ids].sum(-1)
            no = probs[:, self.no_ids].sum(-1)
            out += (yes / (yes + no)).tolist()
        return out
