"""A cross-layer transcoder split by layers (``shard_layers``), in one process: each shard starts from its slice of
the whole CLT's weights, the shards' partial outputs add up to the whole CLT's output and give each shard its
slice of the whole CLT's gradient, the shards join back into the whole CLT, and the trainer refuses what it cannot
split. The same with two real ranks: tests/integration/test_sae_shard_layers.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.sae import Member, OptimConfig, TopKConfig, TrainConfig, Trainer
from mechscope.sae.clt import CLTConfig, CrossLayerTranscoderSAE, join_shards, normal_slice
from mechscope.sae.clt_jumprelu import JumpReLUCLTConfig, JumpReLUCLTSAE
from mechscope.sae.from_store import train_per_site

L, DI, DO, M = 3, 4, 5, 8  # layers, input and output width per layer, latents per layer
CONFIGS = [
    (CrossLayerTranscoderSAE, CLTConfig(d_in=L * DI, d_out=L * DO, latents=L * M, layers=L, k=3)),
    (
        JumpReLUCLTSAE,
        JumpReLUCLTConfig(d_in=L * DI, d_out=L * DO, latents=L * M, layers=L, penalty="tanh", sparsity_coef=0.1),
    ),
]
BLOCKS = [range(0, 1), range(1, 3)]  # two ranks over three layers (World.block)


@pytest.mark.parametrize(("rows", "cols", "chunk"), [(37, 13, 16 * 13), (33, 5, 80), (100, 3, 96), (5, 2, 16)])
def test_normal_slice_draws_the_numbers_of_one_draw(rows, cols, chunk):
    g = torch.Generator().manual_seed(3)
    whole, after = torch.randn(rows, cols, generator=g), torch.randn(4, generator=g)
    g = torch.Generator().manual_seed(3)
    part = normal_slice(g, rows, cols, range(2, rows - 1), range(1, cols), chunk=chunk)
    assert torch.equal(part, whole[2 : rows - 1, 1:])
    assert torch.equal(torch.randn(4, generator=g), after)  # the generator is left where one draw leaves it


def test_world_blocks_cover_the_layers_in_rank_order():
    assert [World(rank=r, size=2).block(3) for r in range(2)] == BLOCKS
    assert [list(World(rank=r, size=3).block(7)) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]


@pytest.mark.parametrize(("cls", "cfg"), CONFIGS, ids=["clt", "jumprelu_clt"])
def test_shards_start_from_the_whole_clt_and_join_back_into_it(cls, cfg):
    whole = cls(cfg, generator=torch.Generator().manual_seed(7))
    shards = [cls(cfg, generator=torch.Generator().manual_seed(7), held=b) for b in BLOCKS]
    assert [s.latents for s in shards] == [M, 2 * M]
    assert shards[1].W_enc.shape == (L * DI, 2 * M) and shards[1].W_dec.shape == (2 * M, L * DO)
    assert torch.equal(shards[1].W_dec, whole.W_dec[M:]) and torch.equal(shards[1].W_enc, whole.W_enc[:, M:])
    joined = join_shards([s.state_dict() for s in shards])
    assert joined.keys() == whole.state_dict().keys()
    for k, v in whole.state_dict().items():
        assert torch.equal(joined[k], v), k
    with pytest.raises(ValueError, match=r"held=range\(2, 4\)"):
        cls(cfg, held=range(2, 4))


class _OtherRanks:
    """partial_sum for one shard in one process: adds what the other shards recorded (the all-reduce's sum)."""

    def __init__(self, others: list[list[torch.Tensor]]):
        self.others, self.calls = others, 0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        out = t + sum(o[self.calls] for o in self.others)
        self.calls += 1
        return out


@pytest.mark.parametrize(("cls", "cfg"), CONFIGS, ids=["clt", "jumprelu_clt"])
def test_partial_sums_give_the_whole_output_loss_and_gradient_slices(cls, cfg):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(16, L * DI + L * DO, generator=g)
    whole = cls(cfg, generator=torch.Generator().manual_seed(7))
    whole_out = whole(rows)
    whole_out.loss.backward()
    # each shard's own partial outputs, recorded (what it contributes to the all-reduce)
    shards = [cls(cfg, generator=torch.Generator().manual_seed(7), held=b) for b in BLOCKS]
    partials: list[list[torch.Tensor]] = [[], []]
    for s, rec in zip(shards, partials):
        s.partial_sum = lambda t, rec=rec: rec.append(t.detach()) or t
        s(rows)
    for r, s in enumerate(shards):
        s.partial_sum = _OtherRanks([partials[1 - r]])
        s.zero_grad()
        out = s(rows)
        out.loss.backward()
        assert torch.allclose(out.x_hat, whole_out.x_hat, atol=1e-5)
        assert torch.allclose(out.loss, whole_out.loss, atol=1e-5)  # the same loss on every rank
        lo, hi = BLOCKS[r].start * M, BLOCKS[r].stop * M
        assert torch.allclose(s.W_dec.grad, whole.W_dec.grad[lo:hi], atol=1e-6)
        assert torch.allclose(s.W_enc.grad, whole.W_enc.grad[:, lo:hi], atol=1e-6)
        assert torch.allclose(s.b_enc.grad, whole.b_enc.grad[lo:hi], atol=1e-6)
        assert torch.allclose(s.b_dec.grad, whole.b_dec.grad, atol=1e-6)  # not R times it
        if hasattr(s, "threshold"):
            assert torch.allclose(s.threshold.grad, whole.threshold.grad[lo:hi], atol=1e-6)
    assert float(whole.W_enc.grad.abs().sum()) > 0 and float(whole.W_dec.grad.abs().sum()) > 0


CLT = Member(CONFIGS[0][1], OptimConfig(lr=1e-3))
SHARDED = TrainConfig(steps=2, batch_size=8, progress=False, device="cpu", shard_layers=True)


@pytest.mark.parametrize(
    ("members", "cfg", "size", "match"),
    [
        ([CLT], dataclasses.replace(SHARDED, distribute_members=True), 2, r"`shard_layers` and `distribute_members`"),
        ([Member(TopKConfig(d_in=8, latents=16, k=2))], SHARDED, 2, r"SAE 'topk' is a topk"),
        ([CLT], SHARDED, 4, r"over 4 ranks: SAE 'clt' has 3 layer\(s\)"),
        ([dataclasses.replace(CLT, optim=OptimConfig(max_grad_norm=1.0))], SHARDED, 2, r"`max_grad_norm` \(1.0\)"),
    ],
    ids=["with-distribute-members", "not-a-clt", "more-ranks-than-layers", "grad-clipping"],
)
def test_shard_layers_refuses_what_it_cannot_split(members, cfg, size, match):
    with pytest.raises(UsageError, match=match):
        Trainer(members, cfg, world=World(rank=0, size=size))


def test_one_process_with_shard_layers_trains_the_whole_clt():
    trainer = Trainer([CLT], SHARDED, world=World())
    assert not trainer.layer_sharded and trainer.saes[0].latents == L * M


def test_one_sweep_per_site_refuses_shard_layers(tmp_path):
    with pytest.raises(UsageError, match=r"`shard_layers` splits one cross-layer transcoder"):
        train_per_site(None, ["mlp_in.0"], [CLT], SHARDED, tmp_path)
