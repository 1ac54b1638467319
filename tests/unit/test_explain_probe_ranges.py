"""The ranges of explain's and probe's settings, found by scripts/campaign.py (issue 28's commands joined the
campaign late): each bad value is refused up front by name instead of running a command that cannot mean it."""

from __future__ import annotations

import pytest

from mechscope.errors import UsageError
from mechscope.explain.evidence import EvidenceConfig
from mechscope.explain.explainers import ExplainerConfig
from mechscope.probing.absorption import LetterConfig
from mechscope.probing.sparse import ProbeConfig


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: LetterConfig(min_cos=1e300), "min_cos"),
        (lambda: LetterConfig(min_share=-0.5), "min_share"),
        (lambda: LetterConfig(f1_jump=2.0), "f1_jump"),
        (lambda: LetterConfig(min_probe_f1=1.5), "min_probe_f1"),
        (lambda: LetterConfig(icl_examples=-1), "icl_examples"),
        (lambda: LetterConfig(max_k=0), "max_k"),
        (lambda: ProbeConfig(inverse_l2=0.0), "inverse_l2"),
        (lambda: ProbeConfig(inverse_l2=1e300), "inverse_l2"),
        (lambda: ExplainerConfig(timeout=1e300), "timeout"),
        (lambda: EvidenceConfig(top=0, per_quantile=0), "per_quantile"),
    ],
)
def test_out_of_range_settings_are_refused_by_name(make, field):
    with pytest.raises(UsageError, match=field):
        make()


def test_the_edges_of_the_ranges_are_accepted():
    """Each end of a declared range is a value the setting takes (no refusal) and keeps as given."""
    letter = LetterConfig(min_cos=-1.0, min_share=0.0, f1_jump=0.0, min_probe_f1=1.0, icl_examples=0)
    assert (letter.min_cos, letter.min_share, letter.f1_jump, letter.min_probe_f1, letter.icl_examples) == (
        -1.0,
        0.0,
        0.0,
        1.0,
        0,
    )
    assert ProbeConfig(inverse_l2=1e6).inverse_l2 == 1e6
    assert ExplainerConfig(timeout=86_400).timeout == 86_400
    assert (EvidenceConfig(top=0, per_quantile=1).top, EvidenceConfig(top=1, per_quantile=0).per_quantile) == (0, 0)
    edges = EvidenceConfig(top=1, per_quantile=0, negatives=0, before=0, after=0)
    assert (edges.negatives, edges.before, edges.after) == (0, 0, 0)
