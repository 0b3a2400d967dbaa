"""ParallelDims validation (no processes) and the named mesh on 4 gloo ranks."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.comm import all_reduce_grads
from bigtrain.parallel.dims import ParallelDims
from tests.dist import run_ranks


def test_degrees_default_to_their_product():
    assert ParallelDims(dp=2, tp=2).world_size == 4
    assert ParallelDims.infer(8, tp=2, pp=2) == ParallelDims(dp=2, tp=2, pp=2, world_size=8)


def test_mismatch_names_the_degree_to_change_and_its_value():
    with pytest.raises(ValueError, match=r"dp=2 x tp=2 x pp=1 = 4 does not match the world "
                                         r"size 8; change one degree: dp=4 or tp=4 or pp=2"):
        ParallelDims(dp=2, tp=2, world_size=8)
    with pytest.raises(ValueError, match="ParallelDims.tp must be an integer >= 1"):
        ParallelDims(tp=0)
    with pytest.raises(ValueError, match="not divisible by tp=3"):
        ParallelDims.infer(4, tp=3)


def test_coordinates_round_trip_with_tensor_parallel_innermost():
    dims = ParallelDims(dp=2, tp=2, pp=2)
    assert dims.coords(1) == {"pp": 0, "dp": 0, "tp": 1}
    assert dims.coords(6) == {"pp": 1, "dp": 1, "tp": 0}
    assert [dims.rank_of(**dims.coords(r)) for r in range(8)] == list(range(8))


def _mesh(rank, world):
    mesh = ParallelDims(dp=2, tp=2).build_mesh("cpu")
    lin = nn.Linear(2, 1)
    lin.weight.grad = torch.full_like(lin.weight, float(rank))
    all_reduce_grads(lin.parameters(), mesh["dp"].get_group())  # bias grad None: skipped
    return (mesh.mesh_dim_names, dist.get_process_group_ranks(mesh["tp"].get_group()),
            dist.get_process_group_ranks(mesh["dp"].get_group()), lin.weight.grad[0, 0].item())


def test_build_mesh_names_dims_and_groups():
    results = run_ranks(_mesh, 4, timeout=60)
    assert results[0][0] == ("pp", "dp", "tp")
    assert [r[1] for r in results] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [r[2] for r in results] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert [r[3] for r in results] == [1.0, 2.0, 1.0, 2.0]  # mean of ranks (0,2) and (1,3)
