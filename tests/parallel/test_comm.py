"""The shared collectives (bigtrain.parallel.comm) on 2 gloo ranks, and the micro-batch
helpers (bigtrain.parallel.microbatch) without processes."""
import torch
from torch import nn

from bigtrain.parallel.comm import all_reduce, all_reduce_grads, broadcast_module
from bigtrain.parallel.microbatch import batch_rows, call_module, rows
from tests.dist import run_ranks


def _grads(rank, world):
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, dtype=torch.float64)),
              nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(1))]
    for i, p in enumerate(params[:3]):
        p.grad = torch.arange(p.numel(), dtype=p.dtype) + 10 * i + rank  # last grad: None
    # a 12-byte cap cuts the float32 gradients into one bucket each; float64 is apart
    all_reduce_grads(params, materialize=True, bucket_bytes=12)
    summed = [nn.Parameter(torch.zeros(2))]
    summed[0].grad = torch.full((2,), rank + 1.0)
    all_reduce_grads(summed, average=False)
    return [p.grad for p in params], summed[0].grad


def test_gradients_average_over_ranks_in_buckets_of_mixed_dtypes():
    (grads0, summed0), (grads1, summed1) = run_ranks(_grads, 2, timeout=60)
    for i, (g0, g1) in enumerate(zip(grads0[:3], grads1[:3])):
        expected = torch.arange(g0.numel(), dtype=g0.dtype) + 10 * i + 0.5  # mean of rank 0, 1
        assert torch.equal(g0, expected) and torch.equal(g1, expected)
    assert grads0[1].dtype == torch.float64
    assert grads0[3] is None and grads1[3] is None  # no rank had one: left as one process
    assert torch.equal(summed0, torch.full((2,), 3.0)) and torch.equal(summed1, summed0)


def _broadcast(rank, world):
    torch.manual_seed(rank)  # different weights on each rank
    module = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    module[1].running_mean += rank + 1.0
    broadcast_module(module)
    top = all_reduce(torch.tensor([float(rank)]), "max")
    return module.state_dict(), top.item()


def test_module_parameters_and_buffers_come_from_rank_0():
    (sd0, top0), (sd1, top1) = run_ranks(_broadcast, 2, timeout=60)
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    torch.manual_seed(0)
    assert torch.equal(sd1["0.weight"], nn.Linear(2, 3).weight)  # rank 0's initial weights
    assert torch.equal(sd1["1.running_mean"], torch.ones(3))
    assert top0 == top1 == 1.0


def test_multi_input_batches_are_called_and_counted_by_their_first_tensor():
    two = lambda a, b: a + b  # noqa: E731
    x = (torch.ones(4, 2), torch.ones(4, 2))
    assert torch.equal(call_module(two, x), torch.full((4, 2), 2.0))
    assert torch.equal(call_module(torch.neg, torch.ones(3)), -torch.ones(3))
    assert rows(x) == 4 and rows([torch.ones(5)]) == 5
    micro = [(torch.ones(3, 2), None, None), (x, torch.ones(4), None)]
    assert batch_rows(micro) == 7
