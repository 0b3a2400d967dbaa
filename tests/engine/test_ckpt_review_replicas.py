"""A ddp checkpoint of a model with BatchNormalization: each rank updates its running
statistics on its own batch (rank 0's are broadcast at the next step), and DCP saved each
replicated tensor from whichever rank it chose, so a checkpoint mixed rank 1's statistics
with rank 0's weights: every resume refused it as damaged (its model checksum, taken on rank
0, did not match). Replicated tensors are now saved from rank 0."""
from __future__ import annotations

import pytest

import bigtrain
from bigtrain.layers import BatchNormalization, Dense, Dropout, Input
from bigtrain.models import Model
from tests.engine.test_checkpoint import FIT, Interrupt, StopAt, data, same, weights

DDP = dict(strategy="ddp", devices=2, watchdog_timeout=20)


def _model(seed: int = 0) -> Model:
    bigtrain.clear_session()
    bigtrain.set_seed(seed)
    inp = Input(shape=(20,))
    x = Dropout(0.3)(BatchNormalization()(Dense(16, activation="relu")(inp)))
    model = Model(inp, Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="categorical_crossentropy", learning_rate=1e-2)
    return model


def test_a_ddp_checkpoint_with_batchnorm_resumes_as_the_uninterrupted_run(tmp_path):
    reference = _model()
    reference.fit(*data(), **FIT, shuffle=True, **DDP)
    folder = str(tmp_path / "ckpt")
    with pytest.raises(Exception, match="stopped at"):
        _model().fit(*data(), **FIT, shuffle=True, checkpoint_dir=folder, checkpoint_every=2,
                     callbacks=[StopAt(1, 3, Interrupt)], **DDP)
    resumed = _model(seed=1)
    resumed.fit(*data(), **FIT, shuffle=True, checkpoint_dir=folder, checkpoint_every=2, **DDP)
    assert same(weights(resumed), weights(reference))  # running statistics included
