"""Dropout under tensor parallelism: between a column-wise Linear and its row-wise partner
each rank draws its own masks; in replicated regions (after the row-wise all-reduce) the
ranks draw the same ones (bigtrain.parallel.tensor_random). Before, every rank's shard got
the same mask: rank 1's heads were dropped exactly where rank 0's were."""
import pytest
import torch
from torch import nn

from bigtrain.layers import Input, MultiHeadAttention
from bigtrain.models import Model
from bigtrain.parallel.base import DistEnv
from bigtrain.parallel.layer_split import SplitsItself
from bigtrain.parallel.tensor_parallel import TensorParallel
from bigtrain.parallel.tensor_random import SplitStream
from bigtrain.zoo.gpt import GPT, GPTConfig
from tests.dist import run_ranks
from tests.parallel.test_pipeline import gpt_compute_loss, gpt_data, train_reference, \
    train_with

RATE = 0.5


class SplitDraw(nn.Module, SplitsItself):
    """A layer that splits itself (like MultiHeadAttention); records one number of the
    stream its forward draws from."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def tp_split(self, degree):
        return None

    def tp_apply(self, tp_mesh):
        pass

    def forward(self, x):
        if self.training:
            self.seen.append(float(torch.rand(())))
        return x


def _region(tp_rank: int, seed: int = 3):
    """(a draw inside a split region, the shared stream's next draw after it) for `tp_rank`."""
    torch.manual_seed(seed)
    stream = SplitStream(tp_rank)
    stream.enter(torch.device("cpu"))
    stream.enter(torch.device("cpu"))  # a second colwise Linear of the region: no-op
    inside = torch.rand(4)
    stream.exit()
    assert not stream.inside
    return inside, torch.rand(4)


def test_a_split_region_forks_a_rank_stream_from_the_shared_one():
    (in0, after0), (in1, after1) = _region(0), _region(1)
    assert not torch.equal(in0, in1)  # each rank its own masks
    assert torch.equal(after0, after1)  # the shared stream moved alike on both ranks
    assert torch.equal(_region(0)[0], in0)  # a function of the shared state (recompute)
    assert not torch.equal(_region(0, seed=4)[0], in0)
    torch.manual_seed(3)
    assert not torch.equal(torch.rand(4), after0)  # it did move on: no mask repeats


def make_chain() -> nn.Sequential:
    """8 -> 32 tanh dropout -> 8 dropout; the colwise Linear's two halves are equal, so the
    ranks' shards of the hidden are equal before dropout and differ only by their masks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(RATE), nn.Linear(32, 8),
                          nn.Dropout(RATE), SplitDraw())
    with torch.no_grad():
        model[0].weight[16:] = model[0].weight[:16]
        model[0].bias[16:] = model[0].bias[:16]
    return model


def _local(t):
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


def _chain_masks(rank, world):
    strategy = TensorParallel(degree=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    model = strategy.setup_module(make_chain())
    seen = {}
    for i in (2, 4):
        model[i].register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, _local(out)))
    torch.manual_seed(7)  # the ranks of a tensor-parallel group share one stream
    x = torch.randn(64, 8)
    out = model(x)
    after = float(torch.rand(()))  # the shared stream after the forward
    strategy.teardown()
    return {"split": seen[2] == 0, "replicated": seen[4] == 0, "out": _local(out),
            "draws": model[5].seen, "after": after}


def test_split_region_masks_differ_across_ranks_and_replicated_ones_agree():
    r0, r1 = run_ranks(_chain_masks, 2, timeout=60)
    assert r0["split"].shape == (64, 16)  # each rank's half of the hidden
    # independent masks agree on about half the positions; copies agree on all of them
    agree = (r0["split"] == r1["split"]).float().mean().item()
    assert agree < 0.65, agree
    for r in (r0, r1):  # each shard still drops at the layer's rate
        assert abs(r["split"].float().mean().item() - RATE) < 0.07
        assert abs(r["replicated"].float().mean().item() - RATE) < 0.07
    assert torch.equal(r0["replicated"], r1["replicated"])  # after the all-reduce: shared
    assert torch.equal(r0["out"], r1["out"])
    assert r0["after"] == r1["after"]  # the shared stream moved alike on both ranks
    assert len(r0["draws"]) == 1 and r0["draws"] != r1["draws"]  # a self-splitting layer


def make_dropout_gpt(dropout: float = 0.3) -> nn.Module:
    """A tiny GPT with dropout whose heads 2, 3 copy heads 0, 1 (q, k, v): with 2-way TP the
    ranks' attention outputs are equal unless their attention-dropout masks differ."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(dropout=dropout))
    with torch.no_grad():
        for block in model.blocks:
            for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                half = lin.out_features // 2
                lin.weight[half:] = lin.weight[:half]
                if lin.bias is not None:
                    lin.bias[half:] = lin.bias[:half]
    return model


def _gpt_heads(rank, world):
    strategy = TensorParallel(degree=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    model = strategy.setup_module(make_dropout_gpt())
    seen = []
    model.blocks[0].attn.c_proj.register_forward_pre_hook(
        lambda m, args: seen.append(_local(args[0])))
    torch.manual_seed(7)
    x, _ = gpt_data(0)
    logits = _local(model(x))
    model.eval()
    with torch.no_grad():
        evaluated = _local(model(x))
    strategy.teardown()
    return seen[0], logits, evaluated


def test_attention_dropout_masks_differ_per_rank_and_the_residual_stream_agrees():
    (heads0, logits0, eval0), (heads1, logits1, eval1) = run_ranks(_gpt_heads, 2, timeout=60)
    assert heads0.shape == heads1.shape and heads0.shape[-1] == 16  # 2 of 4 heads x hs 8
    assert not torch.allclose(heads0, heads1)  # copied heads, other masks
    assert torch.equal(logits0, logits1)  # residual and MLP dropout: one mask, all ranks
    assert torch.equal(eval0, eval1)


def _trained(rank, world, checkpointing):
    return train_with(rank, world, TensorParallel(degree=2,
                                                  activation_checkpointing=checkpointing),
                      lambda: make_dropout_gpt(0.1), gpt_data, gpt_compute_loss, steps=3)


def _trained_both(rank, world):
    return _trained(rank, world, False), _trained(rank, world, True)


def test_training_with_dropout_matches_one_process_and_survives_checkpointing():
    """The masks differ from one process's (other draws, same rate), so the losses agree
    within the noise of a 0.1 dropout, not exactly; activation checkpointing recomputes
    the very masks of the forward (the rank stream derives from the restored shared one),
    so with and without it the runs are equal."""
    _, ref_losses = train_reference(lambda: make_dropout_gpt(0.1), gpt_data,
                                    gpt_compute_loss, steps=3)
    ((plain, losses), (ckpt, ckpt_losses)), ((_, losses1), _) = run_ranks(
        _trained_both, 2, timeout=120)
    assert losses == losses1  # replicated loss: the ranks agree exactly
    assert losses == pytest.approx(ref_losses, abs=0.05)
    assert ckpt_losses == pytest.approx(losses, abs=1e-6)
    assert max((torch.as_tensor(plain[k]) - torch.as_tensor(ckpt[k])).abs().max().item()
               for k in plain) < 1e-5


def make_mha() -> nn.Module:
    """A Keras-style MultiHeadAttention (2 heads, dropout) whose head 1 copies head 0, so each
    rank's partial output (its head times its slice of the output kernel) is the same on
    both ranks unless their attention-dropout masks differ."""
    torch.manual_seed(0)
    inp = Input(shape=(6, 8))
    mha = MultiHeadAttention(num_heads=2, key_dim=4, dropout=RATE)
    net = Model(inp, mha(inp, inp)).net
    with torch.no_grad():
        for role in ("query", "key", "value"):
            getattr(mha, f"{role}_kernel")[:, 1] = getattr(mha, f"{role}_kernel")[:, 0]
            getattr(mha, f"{role}_bias")[1] = getattr(mha, f"{role}_bias")[0]
        mha.output_kernel[1] = mha.output_kernel[0]
    return net


def _mha_partials(rank, world):
    from bigtrain.api.layers import attention
    strategy = TensorParallel(degree=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    net = strategy.setup_module(make_mha())
    net.train()  # dropout draws, as in fit's steps (a Keras-style layer alone infers)
    partials, reduce = [], attention.reduce_from_tp

    def recording(y, group):  # the rank's partial sum, before the all-reduce
        partials.append(y.detach().clone())
        return reduce(y, group)
    attention.reduce_from_tp = recording
    try:
        torch.manual_seed(7)
        out = net(torch.randn(4, 6, 8)).detach()
    finally:
        attention.reduce_from_tp = reduce
        strategy.teardown()
    return partials[0], out


def test_multi_head_attention_split_by_heads_draws_its_masks_per_rank():
    (part0, out0), (part1, out1) = run_ranks(_mha_partials, 2, timeout=60)
    assert not torch.allclose(part0, part1)  # head 1 copies head 0: only the masks differ
    assert torch.equal(out0, out1)
