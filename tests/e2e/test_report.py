"""End to end: a tiny report from tiny synthetic pieces, checked as a file and in headless Chromium.

The pieces are built so each dashboard's content is known: a per-token model (no attention, so the
residual at ``layers.0`` is a function of the current token alone) whose unembedding gives the exact log
probabilities of a peaked bigram chain, and a dictionary with one latent per token (its decoder row is that token's
residual) plus a few random latents that fire on ~10% of rows. So latent t's top contexts mark token t,
and its decoder direction raises the logit of t's likely successor.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from mechscope.report.build import ReportConfig, build_report
from mechscope.report.html import Section
from mechscope.task import Task

WORDS = [
    " the",
    " cat",
    " sat",
    " on",
    " mat",
    " dog",
    " ran",
    " far",
    ".",
    "\n",
    " <b>",
    " &amp;",
    ' "q"',
    " zebra",
    " blue",
    " sky",
    " over",
    " hill",
    " and",
    " then",
    " slept",
    " a",
    " big",
    " red",
]
V, D, T, FIRST = len(WORDS), 32, 16, 1
SUCC = [(7 * t + 3) % V for t in range(V)]


class Block(nn.Module):
    """A residual MLP block: its output is the residual stream after it (the site ``layers.0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, D))

    def forward(self, h):
        return h + self.mlp(h)


class PerTokenLM(nn.Module):
    """Embedding → one residual MLP block → unembedding; HF-like output with ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block()])
        self.lm_head = nn.Linear(D, V, bias=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lm_head(self.layers[0](self.embed(input_ids))))


class TokenDictionary(nn.Module):
    """Latent t < V: decoder row = residual of token t, encoder column = R_t/‖R_t‖², fires above 0.7.
    Latents ≥ V: random unit directions u (decoder 0.3·u) firing above their 90th percentile."""

    def __init__(self, R: torch.Tensor, extra: torch.Tensor, x_sample: torch.Tensor) -> None:
        super().__init__()
        u = extra / extra.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(torch.cat([R, 0.3 * u]), requires_grad=False)  # [n, d]
        self.W_enc = nn.Parameter(torch.cat([R / (R**2).sum(1, keepdim=True), u]).T.contiguous(), requires_grad=False)
        thr_extra = torch.quantile(x_sample @ u.T, 0.9, dim=0)
        self.register_buffer("thr", torch.cat([torch.full((V,), 0.7), thr_extra]))

    def encode(self, x):
        pre = x @ self.W_enc
        return pre * (pre > self.thr)

    def decode(self, codes):
        return codes @ self.W_dec


def bigram_contexts(n: int, g: torch.Generator) -> torch.Tensor:
    ids = torch.empty(n, T, dtype=torch.long)
    ids[:, 0] = torch.randint(0, V, (n,), generator=g)
    for t in range(1, T):
        follow = torch.rand(n, generator=g) < 0.7
        ids[:, t] = torch.where(follow, torch.tensor(SUCC)[ids[:, t - 1]], torch.randint(0, V, (n,), generator=g))
    return ids


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = PerTokenLM().eval()
    train_ids, val_ids = bigram_contexts(64, g), bigram_contexts(20, g)
    with torch.no_grad():
        resid = model.layers[0](model.embed.weight)  # [V, d]: the site, per token
        # The unembedding that makes logits = log P(next | token) of the chain exactly (V < d, so it exists).
        p_next = torch.full((V, V), 0.3 / V)
        p_next[torch.arange(V), torch.tensor(SUCC)] += 0.7
        model.lm_head.weight.copy_((torch.linalg.pinv(resid) @ p_next.log()).T)
    model.requires_grad_(False)

    def rows_of(ids):  # the store's layout: positions FIRST..T-1 of each context, in order
        return resid[ids[:, FIRST:]].reshape(-1, D)

    val_rows, train_rows = rows_of(val_ids), rows_of(train_ids)
    dic = TokenDictionary(resid, torch.randn(8, D, generator=g), train_rows)
    per_ctx = T - FIRST
    cfg = ReportConfig(
        title="tiny report",
        top_latents=10,
        random_latents=6,
        contexts_per_latent=5,
        batch_size=64,
        splice_contexts=20,
        splice_batch_size=8,
        distribution_directions=2,
        distribution_samples=300,
        logit_tokens=3,
    )
    out = tmp_path_factory.mktemp("report") / "report.html"
    outcome = build_report(
        out,
        dic,
        lambda a, b: val_rows[a:b],
        val_rows.shape[0],
        val_ids,
        lambda r: (r // per_ctx, FIRST + r % per_ctx),
        lambda t: WORDS[t],
        cfg=cfg,
        model=model,
        site="layers.0",
        splice_task=Task.next_token(train_ids, val_ids, n_classes=V),
        mean_act=train_rows.mean(0),
        skip_first_positions=FIRST,
        W_U=model.lm_head.weight,
        run_config={"model": "PerTokenLM", "site": "layers.0"},
        extra_points=[{"label": "a frontier", "l0": l0, "fvu": f} for l0, f in ((1, 0.6), (2, 0.3), (4, 0.1))],
        sections=[Section("Extra section", text="added by another module", html="<p id='extra-html'>extra</p>")],
    )
    return outcome, val_ids


def test_report_is_one_self_contained_file(tiny_report):
    outcome, _ = tiny_report
    page = outcome.path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page), "the report must need no network"
    assert "<link" not in page
    assert page.count("data:image/png;base64,") >= 4  # FVU vs L0, losses, density, distribution fits
    for heading in (
        "Configuration",
        "Metrics and baselines",
        "Plots",
        "Activation distributions",
        "Extra section",
        "Latent dashboards",
    ):
        assert heading in page
    assert "id='extra-html'" in page
    assert "&lt;b&gt;" in page and "<b> " not in page  # token text is escaped, never markup
    assert page.count("class='latent'") == len(outcome.latents) == 16


def test_dashboards_have_known_content(tiny_report):
    outcome, val_ids = tiny_report
    token_latents = [d for d in outcome.dashboards if d.index < V]
    assert token_latents
    for d in token_latents:
        assert all(c.token == WORDS[d.index] for c in d.contexts)  # latent t fires on token t
        assert d.logits_up[0][0] == WORDS[SUCC[d.index]]  # and raises its likely successor
        assert abs(d.max_value - 1.0) < 1e-4
    assert outcome.splice is not None
    s = outcome.splice
    assert s.clean_loss < s.rock_loss  # the bigram unembedding beats the constant predictor
    assert s.recovered_vs_zero > 0.8 and s.recovered_vs_mean > 0.8
    assert any(line.startswith("loss recovered") for line in outcome.summary_lines())
    assert 0 <= outcome.reconstruction["fvu"] < 0.5


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="mechscope-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=90
        )


def shown_cards(dom: str) -> list[str]:
    """Ids of latent cards the page's script left visible."""
    cards = re.findall(r"<div class=\"latent\"[^>]*>", dom)
    return [re.search(r'data-latent="(\d+)"', c).group(1) for c in cards if " hidden" not in c]


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); CI installs it"
)
def test_chromium_renders_dashboards_and_search_filters(tiny_report, tmp_path):
    outcome, _ = tiny_report
    url = outcome.path.resolve().as_uri()

    dom = chromium("--dump-dom", url).stdout
    assert 'data-ready="1"' in dom, "the page's script did not run"
    assert len(shown_cards(dom)) == len(outcome.latents)
    assert dom.count("<mark>") >= len(outcome.latents) and '<svg class="hist"' in dom

    # Search by token text: the cards whose top contexts contain it, and no others.
    word = next(WORDS[d.index] for d in outcome.dashboards if d.index < V).strip()
    expect = sorted(
        str(d.index)
        for d in outcome.dashboards
        if word.lower() in "\n".join("".join(c.before) + c.token + "".join(c.after) for c in d.contexts).lower()
    )
    dom = chromium("--dump-dom", f"{url}#q={urllib.parse.quote(word)}").stdout
    assert sorted(shown_cards(dom)) == expect and 0 < len(expect) < len(outcome.latents)
    assert f'data-shown="{len(expect)}"' in dom

    # Search by latent index.
    idx = str(outcome.latents[-1])
    dom = chromium("--dump-dom", f"{url}#q=%23{idx}").stdout
    assert shown_cards(dom) == [idx]

    # Screenshots: the top of the page, and the whole page in one tall window (headless Chromium
    # captures a blank surface once a page has scrolled, so the filtered view, which scrolls to the
    # dashboards, is checked through the DOM above instead).
    for name, size in (("report-top.png", "1400,1600"), ("report-full.png", "1400,8000")):
        shot = tmp_path / name
        res = chromium(f"--screenshot={shot}", f"--window-size={size}", url)
        assert shot.is_file(), res.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(np.uint8)
        assert img.shape[1] == 1400 and img.std() > 10, "blank screenshot"
        packed = (img[..., 0].astype(np.uint32) << 16) | (img[..., 1].astype(np.uint32) << 8) | img[..., 2]
        assert np.unique(packed[::4, ::4]).size > 100
        shutil.copy(shot, Path(tempfile.gettempdir()) / f"mechscope-{name}")  # left for a human to look at
    # The whole page reaches the dashboards: their highlight colour (#ffb347) marks activating tokens.
    marked = np.all(np.abs(img.astype(np.int16) - np.array([255, 179, 71], np.int16)) <= 2, axis=-1)
    assert marked.sum() > 200 and np.nonzero(marked.any(1))[0].min() > 1600


def test_latent_directions_are_random_live_latents(tiny_report):
    from mechscope.report.latents import random_live_latents

    outcome, _ = tiny_report
    latent_ids = [s.index for s in outcome.distributions.stats if s.kind == "latent"]
    assert latent_ids == random_live_latents(outcome.scan, 2, seed=0)
    assert all(outcome.scan.fire_counts[i] > 0 for i in latent_ids)
    assert "drawn at random (seed 0)" in outcome.distributions.latent_choice
    assert "drawn at random (seed 0)" in outcome.path.read_text()
