"""Model/Sequential methods Keras code calls, held to Keras 3 on torch: weights and
trainable, get_layer, pop, get_config/to_json, Input(batch_shape=), evaluate/predict steps,
summary and load_model arguments."""
import json

import numpy as np
import pytest

import bigtrain
import bigtrain.layers as B
from bigtrain.models import Model, Sequential, load_model, model_from_json

RNG = np.random.default_rng(1)
X = RNG.standard_normal((40, 4)).astype("float32")
Y = RNG.standard_normal((40, 2)).astype("float32")


def stacks(trainable=True):
    """The same Dense-BatchNorm-Dense stack in Keras and bigtrain, with Keras's weights."""
    import keras
    bigtrain.clear_session()
    kmodel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                               keras.layers.BatchNormalization(name="bn"),
                               keras.layers.Dense(2, name="b")], trainable=trainable)
    model = Sequential([B.Input((4,)), B.Dense(3, name="a"), B.BatchNormalization(name="bn"),
                        B.Dense(2, name="b")], trainable=trainable)
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def test_weights_lists_match_keras_in_order_shape_and_value():
    kmodel, model = stacks()
    for ours, theirs in [(model.weights, kmodel.weights),
                         (model.trainable_weights, kmodel.trainable_weights),
                         (model.non_trainable_weights, kmodel.non_trainable_weights)]:
        assert [w.shape for w in ours] == [tuple(w.shape) for w in theirs]
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model.weights[0].path == "a/kernel" and model.weights[0].dtype == "float32"
    model.weights[0].assign(np.ones((4, 3), "float32"))  # Keras's layout in, live
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((4, 3)))
    assert model.weights[0].value is model.get_layer("a").linear.weight  # the torch tensor


def test_model_trainable_freezes_everything_as_keras():
    kmodel, model = stacks()
    for m in (kmodel, model):
        m.trainable = False
    assert len(model.trainable_weights) == len(kmodel.trainable_weights) == 0
    assert len(model.non_trainable_weights) == len(kmodel.non_trainable_weights) == 8
    model.trainable = True  # gives back exactly what it froze (moving stats stay buffers)
    assert len(model.trainable_weights) == len(stacks()[0].trainable_weights) == 6
    kmodel, model = stacks(trainable=False)  # Sequential(trainable=False)
    assert model.trainable is kmodel.trainable is False
    assert len(model.trainable_weights) == len(kmodel.trainable_weights) == 0


def test_freezing_after_compile_takes_effect_at_the_next_step_as_in_keras_3():
    kmodel, model = stacks()
    start = model.get_weights()
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss="mse")
        m.trainable = False  # no new compile: Keras 3 stops training at once
        m.train_on_batch(X, Y)
    # the parameters (not BatchNorm's moving stats: Keras runs a frozen BatchNormalization
    # in inference mode, bigtrain's still updates them) stay as they were, as in Keras
    params = [0, 1, 2, 3, 6, 7]
    for i in params:
        np.testing.assert_array_equal(model.get_weights()[i], start[i])
        np.testing.assert_array_equal(kmodel.get_weights()[i], start[i])


def test_get_layer_as_keras():
    import keras
    kmodel, model = stacks()
    assert model.get_layer(index=1).name == kmodel.get_layer(index=1).name == "bn"
    assert model.get_layer("b") is model.layers[-1]
    ki = keras.Input((4,), name="inp")
    kf = keras.Model(ki, keras.layers.Dense(2, name="d")(ki))
    bi = B.Input((4,), name="inp")
    f = Model(bi, B.Dense(2, name="d")(bi))
    for index in (0, 1, -1):  # a functional model's inputs count, as in Keras
        assert f.get_layer(index=index).name == kf.get_layer(index=index).name
    for kwargs, message in [({"name": "nope"}, "No such layer: nope"),
                            ({"index": 9}, "index 9 but model only has 2 layers"),
                            ({}, "Provide either"), ({"name": "d", "index": 1}, "only")]:
        for m in (kf, f):
            with pytest.raises(ValueError, match=message):
                m.get_layer(**kwargs)


def test_pop_as_keras():
    kmodel, model = stacks()
    assert type(model.pop()).__name__ == type(kmodel.pop()).__name__ == "Dense"
    assert [layer.name for layer in model.layers] == [layer.name for layer in kmodel.layers]
    np.testing.assert_allclose(model.predict(X), kmodel.predict(X, verbose=0), atol=1e-5)
    model.add(B.Dense(1))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(X, Y[:, :1], epochs=1, verbose=0)
    with pytest.raises(TypeError, match="no layers"):
        Sequential().pop()


def test_config_and_json_round_trip_rebuild_the_architecture():
    _, seq = stacks()
    bi = B.Input(batch_shape=(None, 4), name="features")
    functional = Model(bi, [B.Dense(2, name="p")(bi), B.Dense(1, name="q")(bi)], name="two")
    for model in (seq, functional):
        for clone in (type(model).from_config(model.get_config()),
                      Model.from_config(json.loads(json.dumps(model.get_config()))),
                      model_from_json(model.to_json())):
            assert type(clone) is type(model) and clone.name == model.name
            assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
            clone.set_weights(model.get_weights())
            ours, theirs = clone.predict(X), model.predict(X)
            for a, b in zip(ours if isinstance(ours, list) else [ours],
                            theirs if isinstance(theirs, list) else [theirs]):
                np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="functional and Sequential"):
        Model(__import__("torch").nn.Linear(2, 2)).get_config()


class Scale(B.Dense):
    """A user's own layer class, known to no registry."""


def test_custom_objects_in_from_config_and_load_model(tmp_path):
    bigtrain.clear_session()
    inp = B.Input((4,))
    model = Model(inp, Scale(2, name="scale")(inp))
    with pytest.raises(ValueError, match="custom_objects"):
        model_from_json(model.to_json())
    clone = model_from_json(model.to_json(), custom_objects={"Scale": Scale})
    assert isinstance(clone.get_layer("scale"), Scale)
    path = str(tmp_path / "m.bigtrain")
    model.save(path)
    loaded = load_model(path, custom_objects={"Scale": Scale}, compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), atol=1e-6)


def test_input_batch_shape_and_refusals():
    import keras
    k = keras.Input(batch_shape=(8, 5), dtype="int32")
    t = B.Input(batch_shape=(8, 5), dtype="int32")
    assert t.shape == tuple(k.shape[1:])
    assert B.Input(shape=(3,), batch_size=16).shape == (3,)
    for kwargs in ({"sparse": True}, {"ragged": True}, {"tensor": np.zeros((1, 3))}):
        with pytest.raises(ValueError, match="not supported"):
            B.Input(shape=(3,), **kwargs)
    with pytest.raises(ValueError, match="disagree"):
        B.Input(shape=(3,), batch_shape=(None, 4))


def compiled_pair():
    kmodel, model = stacks()
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return kmodel, model


def batches(n_batches, size=8):
    for i in range(n_batches):
        yield X[i * size:(i + 1) * size], Y[i * size:(i + 1) * size]


def test_evaluate_and_predict_steps_as_keras():
    kmodel, model = compiled_pair()
    np.testing.assert_allclose(model.evaluate(X, Y, batch_size=8, steps=2),
                               kmodel.evaluate(X, Y, batch_size=8, steps=2, verbose=0),
                               rtol=1e-5)
    np.testing.assert_allclose(model.evaluate(batches(5), steps=3),
                               kmodel.evaluate(batches(5), steps=3, verbose=0), rtol=1e-5)
    assert model.evaluate(X, Y, batch_size=8, steps=2) != pytest.approx(model.evaluate(X, Y))
    ours = model.predict(X, batch_size=8, steps=3)
    assert ours.shape == kmodel.predict(X, batch_size=8, steps=3, verbose=0).shape == (24, 2)
    np.testing.assert_allclose(model.predict(batches(5), steps=2),
                               kmodel.predict(batches(5), steps=2, verbose=0), atol=1e-5)


def test_summary_arguments():
    _, model = stacks()
    model.get_layer("a").linear.weight.requires_grad_(False)
    model.get_layer("a").linear.bias.requires_grad_(False)
    lines = []
    text = model.summary(print_fn=lines.append, show_trainable=True, layer_range=["bn", "b"])
    assert lines == [text]  # one call with the whole summary, as Keras 3
    rows = [line.split() for line in text.splitlines() if line.startswith(("a ", "bn ", "b "))]
    assert [(r[0], r[-1]) for r in rows] == [("bn", "Y"), ("b", "Y")]
    marks = model.summary(print_fn=lambda s: None, show_trainable=True).splitlines()
    assert any(line.startswith("a ") and line.split()[-1] == "N" for line in marks)
    narrow = model.summary(print_fn=lambda s: None, line_length=40, positions=[0.5, 0.8, 1.0])
    assert all(len(line) <= 40 for line in narrow.splitlines()[1:6])
