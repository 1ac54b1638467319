"""How a prompt reaches a local model, shared by the explainer (:class:`~mechscope.explain.explainers.HFWriter`) and
the judge (:class:`~mechscope.explain.judge.HFJudge`): one user turn, with the assistant's turn opened, through the
tokenizer's chat template where it has one; and the token a batch is padded with."""

from __future__ import annotations

from typing import Any


def chat_turn(tokenizer: Any, prompt: str, system: str | None = None) -> str | None:
    """``prompt`` as one user turn (after ``system``'s turn, if given) with the assistant's turn opened, as text; None
    when the tokenizer has no chat template (the caller then writes a plain-text prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def pad_id(tokenizer: Any) -> int:
    """The padding token: the tokenizer's own, else its end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token to pad with")
    return pad
