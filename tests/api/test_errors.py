"""Every bad input gets a clear error before training starts."""
import numpy as np
import pytest

from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model
from tests.api.conftest import seed_like_model, teacher_data

X, Y, IDS = teacher_data(n=64)


def test_labels_integer_for_categorical_loss():
    with pytest.raises(ValueError, match="integer class ids.*sparse_categorical_crossentropy"):
        seed_like_model().fit(X, IDS, verbose=0)


def test_labels_one_hot_for_sparse_loss():
    model = seed_like_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="look one-hot.*categorical_crossentropy"):
        model.fit(X, Y, verbose=0)


def test_labels_out_of_range():
    model = seed_like_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\].*got values in \[1, 7\]"):
        model.fit(X, np.where(IDS == 0, 7, IDS), verbose=0)


def test_nan_inputs_are_counted_and_located():
    bad = X.copy()
    bad[5, 2] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 NaN/Inf.*\(5, 2\)"):
        seed_like_model().fit(bad, Y, verbose=0)


def test_length_mismatch_and_empty_data():
    with pytest.raises(ValueError, match="same number of samples.*x\\[0\\]: 64.*y\\[0\\]: 10"):
        seed_like_model().fit(X, Y[:10], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        seed_like_model().fit(X[:0], Y[:0], verbose=0)


@pytest.mark.parametrize("bs", [0, -3])
def test_batch_size_must_be_positive(bs):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        seed_like_model().fit(X, Y, batch_size=bs, verbose=0)


def test_fit_and_evaluate_before_compile():
    inp = Input(shape=(20,))
    model = Model(inp, Dense(4)(inp))
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(X, Y)
    with pytest.raises(RuntimeError, match="compile"):
        model.evaluate(X, Y)


def test_unknown_optimizer_loss_metric_names():
    model = seed_like_model()
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*adam, adamax, adamw, ftrl, lamb, lion, nadam, rmsprop, sgd"):
        model.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile(optimizer="adam", loss="msee")
    with pytest.raises(ValueError, match="unknown metric"):
        model.compile(optimizer="adam", loss="mse", metrics=["acc_typo"])


def test_input_shape_mismatch_names_the_input():
    with pytest.raises(ValueError, match="expects samples of shape \\(20,\\)"):
        seed_like_model().fit(X[:, :5], Y, verbose=0)


def test_loading_a_file_that_is_not_a_bigtrain_model(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04not a model")
    with pytest.raises(ValueError, match="not a bigtrain model"):
        load_model(str(junk))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.bigtrain"))


def test_validation_split_that_leaves_nothing():
    with pytest.raises(ValueError, match="validation_split"):
        seed_like_model().fit(X, Y, validation_split=0.999, verbose=0)


@pytest.mark.parametrize("loss, units, y", [
    ("mse", 1, np.eye(3, dtype="float32")[np.arange(40) % 3]),
    ("binary_crossentropy", 2, np.zeros((40, 3), "float32")),
    ("sparse_categorical_crossentropy", 3, np.eye(4, dtype="int64")[np.arange(40) % 4]),
])
def test_targets_that_do_not_fit_the_output_are_refused_before_training(loss, units, y):
    """They crashed inside the first step ("shape '[32, 1]' is invalid for input of size
    96"), under ddp only after the ranks had started."""
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    inp = Input(shape=(5,))
    model = Model(inp, Dense(units)(inp))
    model.compile(optimizer="sgd", loss=loss)
    x = np.zeros((40, 5), "float32")
    with pytest.raises(ValueError, match=r"labels of shape \(40, [34]\) do not fit output"):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_python_lists_are_data_as_in_keras():
    """fit(x, y.tolist()) listed every label as an array of 0 samples; x.tolist() read as
    'the data is empty'."""
    import bigtrain
    bigtrain.clear_session()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)).astype("float32"), rng.integers(0, 3, 40)
    inp = Input(shape=(5,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    a = model.evaluate(x, y, verbose=0)
    assert model.evaluate(x.tolist(), y.tolist(), verbose=0) == pytest.approx(a)
    with pytest.raises(ValueError, match=r"same number of samples.*more arrays"):
        model.fit(x, [np.zeros(3)] * 12, verbose=0)


def test_nan_in_validation_data_is_named_as_such():
    import bigtrain
    bigtrain.clear_session()
    x = np.zeros((20, 5), "float32")
    y = np.eye(3, dtype="float32")[np.arange(20) % 3]
    inp = Input(shape=(5,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    xv = x.copy()
    xv[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"^validation x contains 1 NaN"):
        model.fit(x, y, validation_data=(xv, y), verbose=0)


def test_compile_takes_keras_execution_switches():
    """Keras code passing run_eagerly/jit_compile/steps_per_execution compiles as is
    (weighted_metrics: tests/api/test_backlog_weighted_metrics.py)."""
    model = seed_like_model()
    model.compile(optimizer="adam", loss="mse", metrics=["mae"], run_eagerly=True,
                  jit_compile=False, steps_per_execution=4, auto_scale_loss=False)
