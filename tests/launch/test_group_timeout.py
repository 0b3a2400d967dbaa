"""A fit inside a group formed before it (`bigtrain run` on a cluster joins before the script
runs) still bounds its collectives by fit's `timeout`: rank 0 waits in an all-reduce that
rank 1 never joins and fails after about that long, not the group's own 30 s."""
import time

import torch
import torch.distributed as dist

from tests.dist import run_ranks

FIT_TIMEOUT_S = 2.0


def _lonely_allreduce(rank, world_size):
    import os

    from bigtrain.launch.join import join_existing_job
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1")
    join_existing_job(timeout_s=FIT_TIMEOUT_S)  # the group exists: only its timeout changes
    if rank == 1:
        time.sleep(4 * FIT_TIMEOUT_S)  # never joins the collective in time
        return None
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
    except Exception as e:  # noqa: BLE001 - gloo's timeout error
        return time.monotonic() - started, str(e)[:200]
    return time.monotonic() - started, "no error"


def test_fit_timeout_bounds_collectives_of_a_group_that_already_exists():
    took, error = run_ranks(_lonely_allreduce, 2, timeout=90, pg_timeout=30)[0]
    assert "no error" not in error and took < 3 * FIT_TIMEOUT_S, (took, error)
