"""Streams in fit: Python generators of batches (with steps_per_epoch, as Keras takes them)
and torch IterableDatasets train exactly like the same batches from arrays, on one rank and
on two; every sample of an epoch goes to exactly one rank; a resumed run reads past what
its checkpoint trained on; and what a stream cannot do is refused with the fix."""
import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

import bigtrain
from bigtrain.data.streams import BatchStream, SampleStream, Window
from bigtrain.engine.data import shard_bounds
from tests.api.conftest import seed_like_model, teacher_data
from tests.engine.test_checkpoint import StopAt

X, Y, _ = teacher_data(n=96)


def fresh():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    return seed_like_model()


def batches_forever(batch=32):
    while True:
        for i in range(0, len(X), batch):
            yield X[i:i + batch], Y[i:i + batch]


class Samples(IterableDataset):
    def __iter__(self):
        for i in range(len(X)):
            yield torch.from_numpy(X[i]), torch.from_numpy(Y[i])


def _diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


@pytest.fixture(scope="module")
def in_order():
    """Arrays in their stored order: the batches the streams below yield."""
    model = fresh()
    model.fit(X, Y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    shuffled = fresh()
    shuffled.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    assert _diff(model.get_weights(), shuffled.get_weights()) > 1e-4  # the order shows
    return model.get_weights()


def test_generator_and_iterable_dataset_train_like_arrays(in_order):
    model = fresh()
    model.fit(batches_forever(), epochs=2, steps_per_epoch=3, verbose=0)
    assert _diff(in_order, model.get_weights()) == 0.0
    model = fresh()
    model.fit(Samples(), epochs=2, batch_size=32, verbose=0)
    assert _diff(in_order, model.get_weights()) == 0.0


def test_each_sample_goes_to_one_rank():
    stream = SampleStream([(torch.tensor([float(i)]), torch.tensor(i)) for i in range(10)])
    seen = []
    for rank in range(3):
        window = Window(0, 0, None, 4, rows=lambda n, r=rank: shard_bounds(n, r, 3))
        seen += [int(v) for _, (_, y, _) in stream.batches(window) for v in y]
    assert sorted(seen) == list(range(10))
    gen = BatchStream(iter([(np.arange(4.0), np.arange(4))] * 3))
    window = Window(0, 1, 3, 0, rows=lambda n: shard_bounds(n, 1, 2))
    assert [y.tolist() for _, (_, y, _) in gen.batches(window)] == [[2, 3], [2, 3]]




def test_a_resumed_generator_run_reads_past_the_trained_batches(tmp_path, in_order):
    ckpt = dict(checkpoint_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        fresh().fit(batches_forever(), epochs=2, steps_per_epoch=3, verbose=0,
                    callbacks=[StopAt(1, 1, KeyboardInterrupt)], **ckpt)
    model = fresh()
    history = model.fit(batches_forever(), epochs=2, steps_per_epoch=3, verbose=0, **ckpt)
    assert history.epoch == [1]  # resumed inside the second epoch
    assert _diff(in_order, model.get_weights()) <= 1e-6


@pytest.mark.parametrize("source, kw, match", [
    (lambda: batches_forever(), dict(epochs=2), "steps_per_epoch"),
    (lambda: iter([(X[:32], Y[:32])]), dict(steps_per_epoch=3), "ended after 1 batches"),
    (lambda: batches_forever(), dict(steps_per_epoch=1, validation_split=0.2), "validation_data"),
    (lambda: Samples(), dict(y=Y), "y=None"),
    (lambda: iter([X[:32]]), dict(steps_per_epoch=1), r"\(x, y\)"),
    (lambda: batches_forever(), dict(steps_per_epoch=1, validation_data=(X, Y, None, None)),
     "validation_data is a tuple of 4 items"),
])
def test_what_a_stream_cannot_do_is_refused(source, kw, match):
    with pytest.raises(ValueError, match=match):
        fresh().fit(source(), verbose=0, **kw)


def test_a_generator_is_refused_before_ranks_start():
    with pytest.raises(TypeError, match="bigtrain run"):
        fresh().fit(batches_forever(), steps_per_epoch=1, strategy="ddp", devices=2, verbose=0)


@pytest.mark.slow
def test_iterable_dataset_under_ddp_matches_one_process(in_order):
    model = fresh()
    model.fit(Samples(), epochs=2, batch_size=32, verbose=0, strategy="ddp", devices=2,
              timeout=60)
    assert _diff(in_order, model.get_weights()) <= 1e-5
