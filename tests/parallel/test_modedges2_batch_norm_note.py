"""The note fit gives before the ranks start about BatchNormalization: data-parallel ranks
normalise over their share of the batch, pipeline stages over each micro-batch (a pipeline
of one micro-batch and no replicas normalises the whole batch: no note)."""
import warnings

import pytest
from torch import nn

from bigtrain.launch.runner import warn_split_batch_norm
from bigtrain.parallel import DataParallel, Hybrid
from bigtrain.parallel.pipeline import Pipeline

MODEL = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def note(strategy, nprocs: int) -> str | None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_split_batch_norm(MODEL, strategy, nprocs)
    assert len(seen) <= 1
    return str(seen[0].message) if seen else None


def test_data_parallel_ranks_normalise_their_share():
    text = note(DataParallel(), 2)
    assert "normalises over each rank's share, not the whole batch" in text
    assert "micro-batch" not in text


@pytest.mark.parametrize("strategy, nprocs, parts", [
    (Pipeline(stages=2, microbatches=4, schedule="gpipe"), 2, 4),
    (Hybrid(dp=2, pp=2, microbatches=2, schedule="gpipe"), 4, 4),  # 2 replicas x 2 micros
])
def test_pipeline_stages_normalise_each_micro_batch(strategy, nprocs, parts):
    text = note(strategy, nprocs)
    assert f"normalises over each of the {parts} micro-batches (as accumulate_steps={parts})" \
        in text
    assert "rank's share" not in text and "microbatches=1" in text


def test_one_micro_batch_without_replicas_normalises_the_whole_batch():
    assert note(Pipeline(stages=2, microbatches=1, schedule="gpipe"), 2) is None
