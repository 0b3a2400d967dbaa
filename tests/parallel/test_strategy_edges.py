"""Edges where a strategy used to hang, drift silently or crash inside torch: accumulation
with a last batch smaller than the ranks (FSDP), pipeline timing and shape passes moving
BatchNormalization statistics, float16 under tensor parallelism, pipeline micro-batch
counts a schedule cannot run, scalar parameters and Conv2DTranspose under FSDP2, and
tensor-parallel plans for modules whose forward the planner cannot see."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
import bigtrain.optimizers as O
from bigtrain.engine import feed
from bigtrain.engine.loop import check_precision
from bigtrain.layers import BatchNormalization, Conv2DTranspose, Dense, Flatten, Input
from bigtrain.models import Model
from bigtrain.parallel import Pipeline
from bigtrain.parallel.pipeline_partition import measure_layer_costs
from bigtrain.parallel.tensor_parallel import TensorParallel
from bigtrain.parallel.tensor_plan import tp_plan

RNG = np.random.default_rng(0)


def _weights(model):
    return [np.asarray(w, dtype=np.float64) for w in model.get_weights()]


def _fit_pair(build, x, y, strategy, compile_kw, **fit_kw):
    """Weights after one process and after `strategy` on 2 ranks, from the same start."""
    out = []
    for kw in ({}, {"strategy": strategy, "devices": 2}):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        torch.manual_seed(0)
        model = build()
        model.compile(**compile_kw)
        model.fit(x, y, verbose=0, **fit_kw, **kw)
        out.append(model)
    return out


def _max_diff(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(_weights(a), _weights(b)))


# ---- 1: every rank runs the same number of micro-steps ----------------------------------
def test_every_rank_runs_the_same_micro_steps_when_a_share_is_short():
    n, acc = 1, 3  # a last batch of 1 sample over 2 ranks: rank 1's share is empty
    counts = []
    for rank in (0, 1):
        local = torch.arange(n)[:1] if rank == 0 else torch.arange(0)
        parts, weights = feed.micro_split(local, n, acc, 2, feed.largest_share(n, (rank, 2)))
        counts.append(len(parts))
        assert sum(weights) == pytest.approx(len(local) / n * 2)
    assert counts[0] == counts[1]
    # full shares split as before
    parts, _ = feed.micro_split(torch.arange(6), 12, 3, 2, feed.largest_share(12, (0, 2)))
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]


def test_zero3_accumulation_with_a_one_sample_last_batch_finishes_and_matches():
    x = RNG.normal(size=(9, 6)).astype("float32")
    y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 9)]

    def build():
        i = Input(shape=(6,))
        return Model(i, Dense(3, activation="softmax")(Dense(4, activation="relu")(i)))
    one, zero3 = _fit_pair(build, x, y, "zero3", dict(optimizer="sgd",
                                                       loss="categorical_crossentropy"),
                           epochs=1, batch_size=4, accumulate_steps=3, shuffle=False,
                           watchdog_timeout=30)
    assert _max_diff(one, zero3) < 1e-5


# ---- 2: pipeline timing and shape passes leave BatchNormalization alone ------------------
def test_measuring_layer_costs_keeps_buffers_and_the_random_stream():
    layers = [("bn", nn.BatchNorm1d(4)), ("drop", nn.Dropout(0.5)), ("fc", nn.Linear(4, 2))]
    before = {k: v.clone() for k, v in layers[0][1].state_dict().items()}
    sample = torch.randn(2, 4) + 5.0
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    measure_layer_costs(layers, sample, repeats=2)
    assert torch.equal(torch.rand(3), expected)
    for k, v in layers[0][1].state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pipeline_batchnorm_statistics_match_one_process():
    x = (RNG.normal(size=(16, 5)) * 0.1 + 3.0).astype("float32")
    y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 16)]

    def build():
        i = Input(shape=(5,))
        h = Dense(3, activation="softmax")(Dense(4, activation="relu")(BatchNormalization()(i)))
        return Model(i, h)
    one, pipe = _fit_pair(build, x, y, Pipeline(microbatches=1, schedule="gpipe"),
                          dict(optimizer=O.SGD(0.0), loss="categorical_crossentropy"),
                          epochs=1, batch_size=8, shuffle=False)
    assert _max_diff(one, pipe) < 1e-6  # moving mean / variance included


# ---- 3: clear errors before launch, or handled ------------------------------------------
def test_float16_under_tensor_parallelism_is_refused_naming_bf16():
    with pytest.raises(ValueError, match="bf16-mixed"):
        check_precision(TensorParallel(), "16-mixed")


def test_pipeline_refuses_fewer_microbatches_than_1f1b_stages_and_suggests_valid_ones():
    with pytest.raises(ValueError, match="at least 2 micro-batches"):
        Pipeline(microbatches=1).validate(2, 8)
    Pipeline(microbatches=1, schedule="gpipe").validate(2, 8)
    with pytest.raises(ValueError) as info:
        Pipeline(microbatches=2).validate(2, 7)
    assert "among [7]" in str(info.value)


class _ScalarGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(4, 3)
        self.alpha = nn.Parameter(torch.tensor(0.25))

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.where(h > 0, h, self.alpha * h))


def test_zero3_trains_a_scalar_parameter_as_one_process_does():
    x = RNG.normal(size=(12, 6)).astype("float32")
    y = RNG.integers(0, 3, 12)
    one, zero3 = _fit_pair(lambda: Model(_ScalarGate()), x, y, "zero3",
                           dict(optimizer="adam", loss=F.cross_entropy),
                           epochs=1, batch_size=4, shuffle=False)
    assert _max_diff(one, zero3) < 1e-5


# ---- 4: Conv2DTranspose's weight is gathered by FSDP2 ------------------------------------
def test_conv2d_transpose_under_zero2_matches_one_process():
    x = RNG.normal(size=(8, 4, 4, 2)).astype("float32")
    y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 8)]

    def build():
        i = Input(shape=(4, 4, 2))
        return Model(i, Dense(3, activation="softmax")(Flatten()(Conv2DTranspose(3, 2)(i))))
    one, zero2 = _fit_pair(build, x, y, "zero2", dict(optimizer="sgd",
                                                       loss="categorical_crossentropy"),
                           epochs=1, batch_size=4, shuffle=False)
    assert _max_diff(one, zero2) < 1e-5


# ---- 5: tensor-parallel plans only pair Linears whose forward is visible -----------------
class _Normalized(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(F.normalize(torch.relu(self.fc1(x)), dim=-1))


def test_tensor_plan_keeps_linears_of_a_custom_forward_replicated():
    assert tp_plan(_Normalized(), 2) == {"fc1": "replicate", "fc2": "replicate"}
    assert tp_plan(Model(_Normalized()), 2) == {"net.fc1": "replicate", "net.fc2": "replicate"}
    # an override still names the styles; a visible chain still pairs
    assert tp_plan(_Normalized(), 2, {"fc1": "colwise_gather"})["fc1"] == "colwise_gather"
    chain = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    assert tp_plan(chain, 2) == {"0": "colwise", "2": "rowwise"}


def test_batch_normalization_trains_under_zero3():
    """Keras's moving-variance update read the layer's weights outside its submodule's
    forward: FSDP2 had not gathered them ("mixed torch.Tensor and DTensor")."""
    x = RNG.normal(size=(32, 6)).astype("float32")
    y = np.arange(32) % 2

    def build():
        inp = Input(shape=(6,))
        return Model(inp, Dense(2, activation="softmax")(BatchNormalization()(Dense(4)(inp))))
    with pytest.warns(UserWarning, match="BatchNormalization normalises"):
        single, sharded = _fit_pair(build, x, y, "zero3", dict(
            optimizer="sgd", loss="sparse_categorical_crossentropy"), batch_size=8)
    # each rank normalises its half batch: close to one process, not equal
    assert max(float(np.abs(a - b).max())
               for a, b in zip(_weights(single), _weights(sharded))) < 0.1
