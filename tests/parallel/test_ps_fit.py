"""The parameter server through the user-facing fit: with one worker every mode equals one
process; with two, BSP equals one process and ASP/SSP take the reference's steps (servers are
the last ranks, rank 0 returns the weights)."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.parallel import ParameterServer
from tests.dist import run_ranks
from tests.parallel.strategy_cases import build, max_param_diff, reference_state

TOL = 1e-5


def _initial_state() -> dict:
    model, _ = build("seed", batch=40)
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def _displacement(state: dict, initial: dict) -> torch.Tensor:
    return torch.cat([(state[k].double() - initial[k].double()).flatten() for k in sorted(initial)])


def moves_like(ref: dict, got: dict, initial: dict) -> tuple[float, float]:
    """(cosine, norm ratio) of got's and the reference's moves away from the initial weights:
    (1, 1) for the same training; a run that did not train has ratio 0."""
    r, g = _displacement(ref, initial), _displacement(got, initial)
    ratio = float(g.norm() / r.norm())
    return (float(r @ g / (r.norm() * g.norm())) if ratio else 0.0), ratio


def trains_like_reference(ref: dict, got: dict, initial: dict) -> bool:
    """ASP / SSP with 2 workers apply each worker's half-batch push on its own (twice the
    updates of one process, on parameters up to a step stale): the same direction as one
    process (cosine > 0.7; measured ~0.87-0.89) and a comparable distance (0.7 to 3 times;
    measured ~1.5)."""
    cos, ratio = moves_like(ref, got, initial)
    return cos > 0.7 and 0.7 < ratio < 3.0


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
def test_ps_one_worker_equals_one_process_in_every_mode():
    ref, initial = reference_state("seed", batch=40), _initial_state()
    got = run_ranks(_fit_modes, 2, timeout=300)[0]  # 1 worker + 1 server: nothing is stale
    assert {m: max_param_diff(ref, got[m][0]) <= TOL for m in got} == dict.fromkeys(got, True)
    assert max_param_diff(ref, initial) > 100 * TOL  # untrained weights would fail


@pytest.mark.slow
def test_ps_modes_through_the_engine():
    ref, initial = reference_state("seed", batch=40), _initial_state()
    got = run_ranks(_fit_modes, 3, timeout=300)[0]  # 2 workers + 1 server
    assert max_param_diff(ref, got["bsp"][0]) <= TOL
    assert max_param_diff(ref, initial) > 100 * TOL  # the check tells untrained weights apart
    for mode in ("asp", "ssp"):
        assert np.isfinite(got[mode][1])
        assert trains_like_reference(ref, got[mode][0], initial), moves_like(
            ref, got[mode][0], initial)
    # the ASP/SSP check fails for untrained weights, for steps the wrong way, for noise
    noise = {k: v + 1e-3 * torch.randn_like(v) for k, v in initial.items()}
    backwards = {k: 2 * initial[k] - ref[k] for k in initial}
    assert not any(trains_like_reference(ref, bad, initial) for bad in (initial, backwards, noise))


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
