"""nn.SyncBatchNorm on CPU ranks is refused before launch with its fix: torch's
SyncBatchNorm failed inside the first forward on every rank ("expected input tensor to be
on GPU")."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.launch.fit_checks import check_sync_batch_norm
from bigtrain.models import Model
from bigtrain.parallel.base import resolve_strategy


def _net():
    return nn.Sequential(nn.Linear(6, 8), nn.SyncBatchNorm(8), nn.ReLU(), nn.Linear(8, 3))


def test_sync_batch_norm_is_refused_on_cpu_ranks_only():
    ddp = resolve_strategy("ddp")
    with pytest.raises(ValueError, match=r"SyncBatchNorm '1'.*'ddp' on 2 cpu.*BatchNorm1d"):
        check_sync_batch_norm(_net(), ddp, 2, "cpu")
    check_sync_batch_norm(_net(), ddp, 2, "cuda")  # torch syncs it there
    check_sync_batch_norm(_net(), ddp, 1, "cpu")  # one process: no group, plain BatchNorm
    check_sync_batch_norm(nn.Sequential(nn.BatchNorm1d(4)), ddp, 2, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the ranks would compute on GPUs")
def test_fit_refuses_sync_batch_norm_before_any_rank_starts():
    bigtrain.clear_session()
    model = Model(_net())
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    x, y = np.ones((8, 6), np.float32), np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="nn.SyncBatchNorm '1' under strategy 'ddp'"):
        model.fit(x, y, batch_size=4, verbose=0, strategy="ddp", devices=2, timeout=30)
