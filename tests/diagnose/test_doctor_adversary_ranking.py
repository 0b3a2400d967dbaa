"""Slow and poor at once: a run whose model is broken gets that cause first, not a speed
finding. Real small runs (wine, breast cancer) at batch_size=4, where a tiny model's MFU is
far below 20% and small_batch fires: before, its impact (1 - MFU / 20%, about 1.0) put it
above a learning rate 1e-5, dead ReLUs and raw features in the thousands. At batch_size=16
the same tiny models get no small_batch at all: their MFU stays far below 20% at any batch
size, so the batch is not what holds them back. A run whose model
is fine keeps its speed finding first (a Dataset that decodes every item), a 2-rank run
with 2 samples per rank is told to use bigger batches, and the sub-millisecond gather of
in-memory arrays is not called input-bound.
"""
import dataclasses
import tempfile
import zlib

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from bigtrain.diagnose import RunRecord, StepTimes, check_run
from bigtrain.optimizers import SGD, Adam
from tests.diagnose.adversary_runs import fit_dataset, fit_run, mlp, shown, sklearn_data
from tests.diagnose.real_runs import ranked
from tests.dist import run_ranks


def _dead_first_layer(model):
    with torch.no_grad():
        next(m for m in model.net.modules() if isinstance(m, torch.nn.Linear)).bias.fill_(-10.0)


RUNS = {  # name: (dataset, standardized, optimizer, mutate, epochs, the cause's kind)
    "lr_too_low": ("wine", True, SGD(learning_rate=1e-5), None, 4, "lr_too_low"),
    "dead_relus": ("breast_cancer", True, Adam(learning_rate=1e-3), _dead_first_layer, 3,
                   "dead_units"),
    "raw_features": ("breast_cancer", False, Adam(learning_rate=1e-3), None, 3,
                     "feature_scale"),
}


@pytest.mark.parametrize("name", RUNS)
def test_the_models_cause_ranks_above_small_batches(name):
    data_name, scale, optimizer, mutate, epochs, cause = RUNS[name]
    data = sklearn_data(data_name, scale=scale)
    classes = int(data[1].max()) + 1
    record, _ = fit_run(mlp(data[0].shape[1], (32,), classes), data, optimizer,
                        mutate=mutate, epochs=epochs, batch_size=4)
    findings = ranked(record)
    kinds = [f.kind for f in findings]
    assert kinds[0] == cause, shown(findings)
    assert "small_batch" in kinds  # still reported, below the cause


def test_a_tiny_model_at_batch_16_is_not_told_to_grow_its_batch():
    """16 samples per step on a 13-32-3 network: MFU about 0.1%, which 4x the batch could
    at most make 0.4%; the model is too small for the cores, whatever its batch."""
    record, history = fit_run(mlp(13, (32,), 3), sklearn_data("wine"),
                              Adam(learning_rate=1e-2), epochs=10, batch_size=16)
    assert max(history["val_accuracy"]) > 0.9 and record.mfu < 0.02
    assert "small_batch" not in [f.kind for f in check_run(record)], shown(check_run(record))


class Encoded(Dataset):
    """Rows kept zlib-compressed as text, parsed on every read (a decode per item)."""

    def __init__(self, x, y):
        self.blobs = [zlib.compress(",".join(map(repr, r.tolist())).encode()) for r in x]
        self.y = torch.as_tensor(y)

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        row = np.array(zlib.decompress(self.blobs[i]).decode().split(","), dtype=np.float32)
        for _ in range(30):  # the rest of a decode: transforms per item
            row = np.fft.irfft(np.fft.rfft(row), n=len(row)).astype(np.float32)
        return torch.from_numpy(row), self.y[i]


def test_a_healthy_model_on_a_decoding_dataset_is_input_bound_first():
    x, y, _, _ = sklearn_data("digits")
    record, history = fit_dataset(Encoded(x[:480], y[:480]), 64, Adam(learning_rate=1e-3),
                                  epochs=1)
    findings = ranked(record)
    assert findings[0].kind == "input_bound", shown(findings)


def _tiny_batch_job(rank, world, folder, x, y):
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.models import Sequential
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Sequential(mlp(64, (64,), 10))
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy")
    task = make_task(model, prepare_data(model, x, y), None,
                     FitConfig(epochs=1, batch_size=4, verbose=0), [], run_dir=folder)
    run_rank(task, resolve_strategy("ddp"),
             model, DistEnv(rank=rank, world_size=world, local_world_size=world))
    return RunRecord.load(folder) if rank == 0 else None


def test_two_samples_per_rank_on_two_ranks_is_a_small_batch():
    x, y, _, _ = sklearn_data("digits")
    with tempfile.TemporaryDirectory() as folder:
        record = run_ranks(_tiny_batch_job, 2, folder, x[:256], y[:256], timeout=120)[0]
    findings = [f for f in check_run(record) if f.severity != "info"]
    assert findings[0].kind == "small_batch", shown(findings)
    assert "2 samples per rank" in findings[0].evidence
    assert "batch_size=16" in findings[0].advice


def test_a_sub_millisecond_data_wait_on_arrays_is_not_input_bound():
    """A healthy run on in-memory arrays whose batches take 0.15 ms of a 0.45 ms step to
    gather (what the scenario suite's healthy_normalized run measured on a busy machine):
    1/3 of the step, but no background worker can hide a wait that short. The same share of
    a 30 ms step is input-bound."""
    record, _ = fit_run(mlp(13, (32,), 3), sklearn_data("wine"), Adam(learning_rate=1e-2),
                        epochs=10)
    short = StepTimes(data=0.00015, forward=0.0001, backward=0.0001, optimizer=0.0001)
    assert short.share("data") > 0.3
    kinds = [f.kind for f in check_run(dataclasses.replace(record, step_time=short))]
    assert "input_bound" not in kinds, kinds
    long = StepTimes(data=0.01, forward=0.01, backward=0.005, optimizer=0.005)
    kinds = [f.kind for f in check_run(dataclasses.replace(record, step_time=long))]
    assert "input_bound" in kinds, kinds
