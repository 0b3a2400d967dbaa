"""Parity of ddp, zero1, zero2, zero3 and fsdp_offload with single-process training: same
seed, same global batch, 5 optimizer steps, max |param difference| <= 1e-5 (fp32)."""
import pytest

from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff, reference_state, run_strategy

STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "fsdp_offload"]
TOL = 1e-5


def _all_strategies(rank, world_size, kind, accumulate):
    out = {name: run_strategy(kind, name) for name in STRATEGIES}
    out["ddp_accumulate"] = run_strategy(kind, "ddp", accumulate=accumulate)
    out["zero3_accumulate"] = run_strategy(kind, "zero3", accumulate=accumulate)
    return out if rank == 0 else None


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("kind", ["seed", "embed"])
def test_strategy_parity(kind, world_size):
    ref = reference_state(kind)
    got = run_ranks(_all_strategies, world_size, kind, 2, timeout=240)[0]
    diffs = {name: max_param_diff(ref, state) for name, state in got.items()}
    assert all(d <= TOL for d in diffs.values()), diffs
    moved = max_param_diff(ref, reference_state(kind, steps=4))
    assert moved > 100 * TOL  # the parity check can tell one step apart
