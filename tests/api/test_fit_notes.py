"""What fit tells the user when it does less than asked: a multi-rank strategy with neither
devices nor a launcher (one process), and a checkpoint_dir whose run already finished (no
training; the recorded History and weights come back)."""
import warnings

import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model


def small_model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(6,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(8, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def small_data(n=20):
    rng = np.random.default_rng(0)
    return (rng.random((n, 6), dtype=np.float32),
            np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)])


def test_a_multi_rank_strategy_without_devices_warns_that_it_runs_in_one_process():
    x, y = small_data()
    with pytest.warns(UserWarning, match=r"strategy='ddp' runs in this one process.*"
                                         r"devices=N.*bigtrain run"):
        small_model().fit(x, y, epochs=1, batch_size=8, verbose=0, strategy="ddp")
    with warnings.catch_warnings():  # asked for plainly: no note
        warnings.simplefilter("error")
        small_model().fit(x, y, epochs=1, batch_size=8, verbose=0)
        small_model().fit(x, y, epochs=1, batch_size=8, verbose=0, strategy="single")
        small_model().fit(x, y, epochs=1, batch_size=8, verbose=0, strategy="ddp", devices=1)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def finished_run_twice(tmp_path, **fit_kw):
    """Fit 2 epochs into a checkpoint_dir, then fit again on it: (first History, first
    weights, second History, second weights, warnings of the second fit)."""
    x, y = small_data()
    ckpt = str(tmp_path / "ckpt")
    model = small_model()
    first = model.fit(x, y, epochs=2, batch_size=8, verbose=0, checkpoint_dir=ckpt, **fit_kw)
    trained = _weights(model)
    again = small_model()  # fresh weights: only the checkpoint can bring the trained ones
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = again.fit(x, y, epochs=2, batch_size=8, verbose=0, checkpoint_dir=ckpt,
                           **fit_kw)
    return first, trained, second, _weights(again), [str(w.message) for w in caught]


def _check_finished(first, trained, second, weights, notes):
    assert first.epoch == [0, 1] and len(first.history["loss"]) == 2
    assert second.history == first.history and second.epoch == first.epoch
    assert all((weights[k] == trained[k]).all() for k in trained)
    assert any("already finished 2 epochs" in n and "nothing to train" in n
               and "new checkpoint_dir" in n for n in notes), notes


def test_a_finished_checkpoint_dir_says_so_and_returns_its_history(tmp_path):
    _check_finished(*finished_run_twice(tmp_path))


def test_a_finished_checkpoint_dir_under_ddp_returns_its_history(tmp_path, capfd):
    first, trained, second, weights, notes = finished_run_twice(tmp_path, strategy="ddp",
                                                                devices=2)
    # the note is printed by rank 0 of the job: it reaches this process's stderr
    _check_finished(first, trained, second, weights, notes + [capfd.readouterr().err])


def test_the_history_of_a_resumed_run_is_kept_whole_in_its_checkpoint(tmp_path):
    """1 epoch, then resumed to 3: a third fit returns all 3 epochs' History."""
    x, y = small_data()
    ckpt = str(tmp_path / "ckpt")
    small_model().fit(x, y, epochs=1, batch_size=8, verbose=0, checkpoint_dir=ckpt)
    resumed = small_model().fit(x, y, epochs=3, batch_size=8, verbose=0, checkpoint_dir=ckpt)
    assert resumed.epoch == [1, 2]  # a resumed fit reports the epochs it ran, as Keras
    with pytest.warns(UserWarning, match="already finished 3 epochs"):
        done = small_model().fit(x, y, epochs=3, batch_size=8, verbose=0, checkpoint_dir=ckpt)
    assert done.epoch == [0, 1, 2]
    assert done.history["loss"][1:] == pytest.approx(resumed.history["loss"])
