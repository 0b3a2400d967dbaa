"""The support matrix (tests.parallel.support_matrix): for each strategy row, every model x
optimizer cell trains like one process (<= 1e-5 after >= 5 steps, fp32) or is refused
before any rank starts. One group of ranks per row runs all of the row's cells.

One row: pytest -q tests/parallel/test_support_matrix.py -k zero2
"""
from functools import lru_cache

import pytest

from bigtrain.parallel import DataParallel
from tests.dist import run_ranks
from tests.parallel import support_matrix as sm


@lru_cache(maxsize=None)
def _reference(model_name: str, opt_name: str) -> tuple[dict, float]:
    return sm.reference(model_name, opt_name)


def _check_cell(row: str, cell: tuple, got) -> str | None:
    """None when the cell matches one process, else a line saying how it fails."""
    ref, moved = _reference(*cell)
    # the guard: one optimizer step moves the weights far more than the tolerance
    assert moved > sm.GUARD * sm.TOL, (row, cell, moved)
    status, value = got
    if status == "error":
        return f"{row} / {cell[0]} / {cell[1]}: error on the ranks: {value}"
    diff = sm.max_diff(ref, value)
    if diff > sm.TOL:
        return f"{row} / {cell[0]} / {cell[1]}: differs from one process by {diff:.3g} " \
               f"(tolerance {sm.TOL:g}; one step moves {moved:.3g})"
    return None


def _row_results(row: str) -> dict:
    """{cell: ("refused", reason) | ("ok", state) | ("error", text)} for every cell."""
    refused = {cell: sm.refusal(row, *cell) for cell in sm.cells()}
    todo = [cell for cell, why in refused.items() if why is None]
    results = {cell: ("refused", why) for cell, why in refused.items() if why is not None}
    ranks = sm.ROWS[row].ranks
    if ranks == 1:
        results.update({cell: ("ok", sm.single_cell(*cell)) for cell in todo})
    elif todo:
        per_rank = run_ranks(sm.run_row_cells, ranks, row, todo, timeout=60 + 25 * len(todo))
        for cell in todo:
            errors = {}  # message -> ranks that raised it
            for r, out in enumerate(per_rank):
                if out[cell][0] == "error":
                    errors.setdefault(out[cell][1], []).append(str(r))
            results[cell] = ("error", "; ".join(f"rank {','.join(r)}: {e}"
                                               for e, r in errors.items())) \
                if errors else per_rank[0][cell]
    return results


@pytest.mark.slow
@pytest.mark.timeout(900)  # 30 cells (and, first, their single-process references)
@pytest.mark.parametrize("row", list(sm.ROWS))
def test_support_matrix_row(row):
    results = _row_results(row)
    failures = [line for cell, got in results.items() if got[0] != "refused"
                for line in [_check_cell(row, cell, got)] if line]
    assert not failures, f"{len(failures)} of {len(results)} cells fail:\n" + \
        "\n".join(failures)


def test_readme_support_table_is_generated_from_the_matrix():
    from tests.parallel import support_table
    with open(support_table.README, encoding="utf-8") as f:
        readme = f.read()
    assert support_table.replace_section(readme, support_table.render()) == readme, \
        "README.md's support table is out of date: run python -m tests.parallel.support_table"


class DoubledGradients(DataParallel):
    """A broken ddp planted for the check below: every gradient comes out twice too big."""

    def backward(self, loss):
        super().backward(loss * 2.0)


@pytest.mark.slow
def test_matrix_check_catches_a_doubled_gradient():
    # plain SGD turns the doubled gradient into a doubled step (Adam's m / sqrt(v) nearly
    # cancels a constant scale, which is why the matrix does not rely on Adam alone)
    cell = ("seed_mlp", "sgd")
    got = run_ranks(sm.run_row_cells, 2, DoubledGradients, [cell], timeout=120)[0]
    failure = _check_cell("doubled", cell, got[cell])
    assert failure is not None and "differs from one process" in failure, failure


def test_models_a_strategy_cannot_split_are_refused_before_any_rank_starts():
    # fit(devices=2) raises in this process (the launcher is never reached)
    why = sm.refusal("pipeline_gpipe", "wide_and_deep", "sgd")
    assert why is not None and "cannot cut a WideAndDeep" in why, why
    why = sm.refusal("pipeline_interleaved", "seed_mlp", "adam")
    assert why is not None and "only 2 blocks" in why and "'1f1b'" in why, why
    assert sm.refusal("pipeline_gpipe", "seed_mlp", "adam") is None  # this one launches
    # stages exchange plain tensors: the Embedding's mask would not reach the LSTM
    why = sm.refusal("hybrid_dp2_pp2", "lstm_masked_tiny", "sgd")
    assert why is not None and "time-step mask" in why and "ddp" in why, why
