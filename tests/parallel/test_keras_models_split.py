"""Keras-style chain models (functional or Sequential) under pipeline and tensor parallel:
the seed Dense model trains with parity to one process."""
import pytest

from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff, reference_state, run_strategy


def _run(rank, world_size, names):
    out = {name: run_strategy("seed", name, batch=40) for name in names}
    return out if rank == 0 else None


@pytest.mark.slow
def test_seed_dense_model_under_tensor_and_pipeline_parallel():
    ref = reference_state("seed", batch=40)
    got = run_ranks(_run, 2, ["tensor", "pipeline"], timeout=240)[0]
    diffs = {name: max_param_diff(ref, state) for name, state in got.items()}
    assert all(d <= 1e-5 for d in diffs.values()), diffs
