"""A local causal language model as a yes/no :class:`~mechscope.explain.types.Judge`.

``HFJudge("smollm2").p_yes(prompts)`` wraps each prompt in the model's chat template as one user turn, runs one
forward pass per batch of prompts and reads the next-token distribution p after each prompt's last token:

    P(yes) = Σ_{t ∈ yes_ids} p[t],  P(no) = Σ_{t ∈ no_ids} p[t],  score = P(yes) / (P(yes) + P(no)).

The answer tokens are every spelling of the word in :data:`YES` / :data:`NO` that the tokenizer encodes as a single
token (for SmolLM2-135M-Instruct: "Yes" 10539, " Yes" 9230, "yes" 10407, " yes" 9805; "No" 5230, " No" 2838,
"no" 4607, " no" 787; "YES" is two tokens there and left out, "NO" is 13465).

Cost (the scorers ask thousands of prompts): the tokens every prompt of a batch starts with (the chat template's
system turn, the fixed instruction and, as the scorers order their prompts, the explanation) are run once, and
their keys and values are shared by the batch, whose rest is left-padded after them (positions and attention mask
as each prompt would have alone); only the last position goes through the output layer, in float32. With
``dtype="bfloat16"`` the transformer body runs under CPU/GPU autocast (matrix products in bfloat16, the residual
stream, norms and output layer in float32).

This departs from delphi, whose scorers let the model *generate* an answer (a list of 0/1 labels) and parse it:
one forward pass gives a graded score, which AUROC needs (a parsed 0/1 gives one point on the ROC curve), it is
deterministic (no sampling, no parsing failures), and it costs one forward per prompt instead of a generation.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch

from mechscope.explain.chat import chat_turn, pad_id
from mechscope.models.families import check_positions

YES = ("Yes", " Yes", "yes", " yes", "YES", " YES")
"""Spellings of the positive answer; those the tokenizer encodes as one token are summed."""
NO = ("No", " No", "no", " no", "NO", " NO")
"""Spellings of the negative answer; those the tokenizer encodes as one token are summed."""


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    for k in range(max(n, 0)):
        if any(r[k] != rows[0][k] for r in rows):
            return k
    return max(n, 0)


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
    (:func:`answer_ids` keeps those that are one token); ``dtype``: ``bfloat16`` runs the body under autocast (see
    the module's docstring; its P(yes) differs from float32's by up to a few hundredths on SmolLM2).
    """

    def __init__(
        self,
        model: Any = "smollm2",
        batch_size: int = 16,
        system: str | None = None,
        device=None,
        yes: tuple[str, ...] = YES,
        no: tuple[str, ...] = NO,
        dtype: Literal["float32", "bfloat16"] = "float32",
    ):
        from mechscope.models.resolve import language_model

        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
        self.lm = model if hasattr(model, "tokenizer") else language_model(model, device=device)
        self.batch_size = batch_size
        self.system = system
        self.dtype = dtype
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
            out += self._batch([self._ids(p) for p in prompts[start : start + self.batch_size]])
        return out

    def _body(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: Any) -> Any:
        """The transformer without its output layer (under bfloat16 autocast if asked)."""
        dev, model = self.lm.device, cast(Any, self.lm.model)  # a Hugging Face causal LM: base_model is its body
        with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            return model.base_model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=pos.to(dev),
                cache=past,
                use_cache=True,
            )

    def _batch(self, rows: list[list[int]]) -> list[float]:
        check_positions(self.lm.model, max(len(r) for r in rows), "the judge's prompt (the window and the explanation)")
        n, b = shared_prefix(rows), len(rows)
        past = None
        if n:  # the shared start, run once; its keys and values are repeated for every row
            past = self._body(
                torch.tensor([rows[0][:n]]), torch.ones(1, n, dtype=torch.long), torch.arange(n)[None], None
            )
            past = past.past_key_values
            past.batch_repeat_interleave(b)
        tails = [r[n:] for r in rows]
        width = max(len(t) for t in tails)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, t in enumerate(tails):  # left padding: the last real token of every row is at position -1
            ids[i, width - len(t) :] = torch.tensor(t)
            mask[i, width - len(t) :] = 1
        # positions from the mask, so a row is placed as it would be alone (pads sit between the prefix and the row)
        pos = n + (mask.cumsum(-1) - 1).clamp(min=0)
        full = torch.cat([torch.ones((b, n), dtype=torch.long), mask], 1)
        hidden = self._body(ids, full, pos, past).last_hidden_state[:, -1]  # [B, d]
        model: Any = self.lm.model
        head = model.get_output_embeddings()
        logits = torch.nn.functional.linear(
            hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float()
        )
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:  # Gemma 2 style: the model's own logits are capped
            logits = torch.tanh(logits / cap) * cap
        probs = logits.double().softmax(-1)  # [B, vocab]
        yes = probs[:, self.yes_ids].sum(-1)
        no = probs[:, self.no_ids].sum(-1)
        return (yes / (yes + no)).tolist()
