"""The parameter server through the user-facing fit: BSP equals one process; the seed-like
model trains in all three modes (servers are the last ranks, rank 0 returns the weights)."""
import numpy as np
import pytest

import bigtrain
from bigtrain.parallel import ParameterServer
from tests.dist import run_ranks
from tests.parallel.strategy_cases import build, max_param_diff, reference_state


def _fit_modes(rank, world_size):
    import torch.distributed as dist

    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                  local_world_size=world_size)
    out = {}
    for mode in ("bsp", "asp", "ssp"):
        model, task = build("seed", batch=40)
        strategy = ParameterServer(servers=1, mode=mode, staleness=1)
        strategy.validate(world_size, task.config.batch_size)
        strategy.setup(env)
        try:
            result = train(task, strategy, model)
        finally:
            strategy.teardown()
        dist.barrier()
        if rank == 0:
            out[mode] = (result.state_dict, result.history["loss"][0])
    return out if rank == 0 else None


@pytest.mark.slow
def test_ps_modes_through_the_engine():
    ref = reference_state("seed", batch=40)
    got = run_ranks(_fit_modes, 3, timeout=300)[0]  # 2 workers + 1 server
    assert max_param_diff(ref, got["bsp"][0]) <= 1e-5
    for mode in ("asp", "ssp"):
        assert np.isfinite(got[mode][1])
        assert max_param_diff(ref, got[mode][0]) < 0.05  # trains, near the synchronous run


@pytest.mark.slow
def test_ps_from_fit_with_devices():
    from tests.api.conftest import seed_like_model, teacher_data
    x, y, _ = teacher_data(n=400)
    bigtrain.set_seed(0)
    model = seed_like_model()
    hist = model.fit(x, y, epochs=6, batch_size=40, verbose=0, devices=3,
                     strategy=ParameterServer(servers=1, mode="ssp", staleness=2))
    assert hist.history["accuracy"][-1] > 0.8
    assert "staleness_max" in hist.stats or "all_workers_staleness_max" in hist.stats
