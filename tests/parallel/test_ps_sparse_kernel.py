"""A server piece gets sparse embedding-row gradients only when its optimizer's kernel takes
them: plain SGD is built fused (bigtrain.api.optimizer_kernels), and torch's fused SGD
refuses sparse gradients, so such a piece must be sent dense rows."""
import pytest
import torch

from bigtrain.api.optimizers import get_optimizer
from bigtrain.parallel.parameter_server.store import _accepts_sparse


def _sparse_grad():
    return torch.sparse_coo_tensor([[1]], torch.ones(1, 3), (4, 3))


def test_fused_sgd_refuses_sparse_gradients_so_the_store_sends_dense_rows():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    fused = torch.optim.SGD([p], lr=0.1, fused=True)
    p.grad = _sparse_grad()
    with pytest.raises(RuntimeError, match="sparse"):
        fused.step()
    assert not _accepts_sparse(fused)
    assert _accepts_sparse(torch.optim.SGD([p], lr=0.1, fused=False))


def test_the_built_in_sgd_kernel_is_judged_by_what_it_is():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = get_optimizer("sgd").build([p])
    p.grad = _sparse_grad() if _accepts_sparse(opt) else _sparse_grad().to_dense()
    opt.step()  # whichever form the store would send, the step runs
    assert float(p.detach().abs().sum()) > 0
