"""The records the explainers and scorers share, and the two things they ask of a language model.

An :class:`Example` is one window of text as the model's tokens, with one latent's activation at each token;
:class:`Evidence` is what is known of one latent: its top-activating windows, windows sampled across its
activation quantiles, and windows where it does not fire at all.

A :class:`Writer` turns a prompt into text (the explainer's side); a :class:`Judge` gives, for each prompt, the
probability that the answer is "yes" (the scorers' side). Local models and chat endpoints implement both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Example:
    """One window of text with one latent's activation at each of its tokens."""

    tokens: tuple[str, ...]
    """The window's tokens, decoded one by one (joined, they give the text)."""
    acts: tuple[float, ...]
    """The latent's activation at each token, 0.0 where it does not fire; as long as ``tokens``."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.acts):
            raise ValueError(f"tokens has {len(self.tokens)} entries but acts has {len(self.acts)}")

    @property
    def text(self) -> str:
        """The window as plain text."""
        return "".join(self.tokens)

    @property
    def max_act(self) -> float:
        """The largest activation in the window (0.0 for a window where the latent never fires)."""
        return max(self.acts, default=0.0)


@dataclass(frozen=True)
class Evidence:
    """What the store says of one latent."""

    latent: int
    """The latent's index in its dictionary."""
    top: tuple[Example, ...]
    """The windows around its largest activations, largest first."""
    quantiles: tuple[Example, ...]
    """Windows where it fires, sampled evenly across its activation quantiles (weak as well as strong firing)."""
    negatives: tuple[Example, ...]
    """Random windows in which it does not fire at any token."""


class Writer(Protocol):
    """A language model that answers a prompt with text."""

    def write(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """One answer per prompt (greedy, so a run is repeatable)."""
        ...


class Judge(Protocol):
    """A language model asked yes/no questions."""

    def p_yes(self, prompts: list[str]) -> list[float]:
        """For each prompt, P(yes) / (P(yes) + P(no)) of the first answer token, in [0, 1]."""
        ...
