"""torch's Adafactor over tensor-parallel split weights is refused naming the strategy:
the refusal said "the weights this strategy shards" under strategy="tensor"."""
import torch
from torch import nn

from tests.dist import run_ranks


def _refusal(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from bigtrain.parallel.tensor_parallel import TensorParallel
    mesh = init_device_mesh("cpu", (world,))
    layer = nn.Linear(4, 4)
    layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Shard(0)]))
    try:
        TensorParallel(degree=world).setup_optimizer(
            layer, lambda params: torch.optim.Adafactor(params))
    except ValueError as e:
        return str(e)
    return None


def test_adafactor_refusal_names_tensor_parallelism():
    (message,) = run_ranks(_refusal, 1, timeout=60)
    assert message is not None and message.startswith(
        "torch.optim.Adafactor cannot step the weights tensor (degree=1) shards"), message
    assert "this strategy" not in message
