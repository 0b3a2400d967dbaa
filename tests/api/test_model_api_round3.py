"""Model-API parity with Keras 3 on torch, around fit rather than layer math: functional
models of dict inputs and outputs, a Sequential built by its first data, clone_model, and
model.metrics / get_metrics_result / reset_metrics. The same calls on both, with the same
starting weights, give the same numbers."""
import numpy as np
import pytest

import bigtrain
import bigtrain.layers as B
from bigtrain import models
from bigtrain.models import Model, Sequential, load_model

RNG = np.random.default_rng(3)
X = RNG.standard_normal((40, 4)).astype("float32")
Y = RNG.standard_normal((40, 2)).astype("float32")
XD = {"a": X, "b": X[:, :3]}
YD = {"zz": Y, "aa": Y[:, :1]}


def _dict_graph(layers, make_input, model_class):
    """Inputs {"b", "a"} and outputs {"zz", "aa"}, given out of Keras's (sorted) order."""
    b, a = make_input((3,), name="b"), make_input((4,), name="a")
    h = layers.Concatenate(name="cat")([a, b])
    return model_class({"b": b, "a": a}, {"zz": layers.Dense(2, name="d1")(h),
                                          "aa": layers.Dense(1, name="d2")(h)})


def dict_pair():
    import keras
    bigtrain.clear_session()
    kmodel = _dict_graph(keras.layers, keras.Input, keras.Model)
    model = _dict_graph(B, B.Input, Model)
    model.set_weights(kmodel.get_weights())  # Keras's order: outputs by sorted key
    return kmodel, model


def _close(ours: dict, theirs: dict, atol=1e-5):
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(np.asarray(ours[key]), np.asarray(theirs[key]), rtol=0,
                                   atol=atol, err_msg=key)


def test_dict_inputs_and_outputs_train_and_predict_as_keras():
    kmodel, model = dict_pair()
    assert [t.node.layer.name for t in model.net.input_tensors] == \
        [t.name for t in kmodel.inputs]
    _close(model.predict(XD), kmodel.predict(XD, verbose=0))
    _close({k: v.detach() for k, v in model(XD).items()},
           {k: v.detach() for k, v in kmodel(XD).items()})
    _close(model.predict_on_batch(XD), kmodel.predict_on_batch(XD))
    for m in (kmodel, model):
        m.compile("sgd", {"zz": "mse", "aa": "mae"}, metrics={"zz": ["mae"]},
                  loss_weights={"zz": 1.0, "aa": 0.5})
    history = model.fit(XD, YD, epochs=2, shuffle=False, verbose=0).history
    _close(history, kmodel.fit(XD, YD, epochs=2, shuffle=False, verbose=0).history)
    _close(model.evaluate(XD, YD, return_dict=True),
           kmodel.evaluate(XD, YD, return_dict=True, verbose=0))
    # the list in Keras's order: each output's loss in the order of compile's loss dict
    np.testing.assert_allclose(model.evaluate(XD, YD), kmodel.evaluate(XD, YD, verbose=0),
                               rtol=1e-5)
    np.testing.assert_allclose(model.test_on_batch(XD, YD), kmodel.test_on_batch(XD, YD),
                               rtol=1e-5)
    assert model.metrics_names == kmodel.metrics_names
    _close(model.train_on_batch(XD, YD, return_dict=True),
           kmodel.train_on_batch(XD, YD, return_dict=True))
    assert model.output_names == ["aa", "zz"]


def test_dict_outputs_survive_config_save_and_a_nested_call(tmp_path):
    _, model = dict_pair()
    model.compile("sgd", {"zz": "mse", "aa": "mse"})
    model.fit(XD, YD, verbose=0)
    expected = model.predict(XD)
    model.save(str(tmp_path / "m.keras"))
    for other in (load_model(str(tmp_path / "m.keras")), Model.from_config(model.get_config())):
        assert other.output_names == ["aa", "zz"]
        if other.compiled is None:
            other.set_weights(model.get_weights())
        _close(other.predict(XD), expected)
    a, b = B.Input((4,), name="a"), B.Input((3,), name="b")
    outs = model([a, b])  # a model of dict outputs called as a layer gives its dict, as Keras
    assert sorted(outs) == ["aa", "zz"]
    outer = Model([a, b], B.Add()([outs["zz"], outs["zz"]]))
    np.testing.assert_allclose(outer.predict([X, X[:, :3]]), 2 * expected["zz"], atol=1e-5)
    rebuilt = Model.from_config(outer.get_config())
    assert rebuilt.predict([X, X[:, :3]]).shape == (40, 2)


def test_a_dict_key_that_is_not_its_inputs_name_is_refused():
    with pytest.raises(ValueError, match="Input\\(..., name='x1'\\)"):
        x = B.Input((4,), name="q")
        Model({"x1": x}, B.Dense(1)(x))


def _stack(layers):
    return [layers.Dense(3, kernel_initializer="ones", bias_initializer="zeros"),
            layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")]


def test_a_sequential_without_input_shape_builds_on_its_first_data_as_keras():
    import keras
    kmodel, model = keras.Sequential(_stack(keras.layers)), Sequential(_stack(B))
    for m in (kmodel, model):  # compiled before the input shape is known, as Keras allows
        m.compile("sgd", "mse", metrics=["mae"])
    assert model.metrics_names == kmodel.metrics_names == ["loss", "compile_metrics"]
    assert model.get_weights() == kmodel.get_weights() == []
    text = model.summary(print_fn=lambda *args, **kwargs: None)
    assert "0 (unbuilt)" in text and "Total params: 0" in text
    with pytest.raises(ValueError, match="not built yet"):
        model.count_params()
    _close(model.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0).history,
           kmodel.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0).history,
           atol=1e-4)
    assert len(model.layers) == len(kmodel.layers) == 2
    for call in ("predict", "build", "call", "train_on_batch"):
        kmodel, model = keras.Sequential(_stack(keras.layers)), Sequential(_stack(B))
        if call == "train_on_batch":
            for m in (kmodel, model):
                m.compile("sgd", "mse")
            np.testing.assert_allclose(model.train_on_batch(X, Y), kmodel.train_on_batch(X, Y),
                                       rtol=1e-5)
            continue
        if call == "build":  # Keras's batch shape, (None, features)
            model.build((None, 4))
            kmodel.build((None, 4))
        ours = model(X).detach().numpy() if call == "call" else model.predict(X)
        np.testing.assert_allclose(ours, kmodel.predict(X, verbose=0), rtol=1e-5)


def test_an_unbuilt_sequential_of_token_ids_keeps_them_integers():
    model = Sequential([B.Embedding(10, 3), B.Flatten(), B.Dense(1)])
    model.compile("sgd", "mse")
    ids = np.arange(20).reshape(10, 2) % 10
    model.fit(ids, np.ones((10, 1), "float32"), verbose=0)
    assert model.predict(ids).shape == (10, 1)
    fresh = Sequential([B.Dense(2)])
    fresh.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no input shape yet"):
        fresh.fit(iter([(X, Y)]))


def test_clone_model_rebuilds_with_fresh_weights_as_keras():
    import keras
    bigtrain.clear_session()
    model = Sequential([B.Input((4,)), B.Dense(3, name="d"), B.BatchNormalization(name="bn")])
    model.compile("sgd", "mse")
    kmodel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                               keras.layers.BatchNormalization(name="bn")])
    twin, ktwin = models.clone_model(model), keras.models.clone_model(kmodel)
    assert [l.name for l in twin.layers] == [l.name for l in ktwin.layers] == ["d", "bn"]
    assert twin.compiled is None and type(twin) is Sequential
    assert not np.allclose(twin.get_weights()[0], model.get_weights()[0])  # fresh, as Keras
    twin.set_weights(model.get_weights())
    np.testing.assert_allclose(twin.predict(X), model.predict(X), rtol=1e-6)
    _, functional = dict_pair()
    assert models.clone_model(functional).output_names == ["aa", "zz"]
    import torch
    with pytest.raises(ValueError, match="copy.deepcopy"):
        models.clone_model(Model(torch.nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="clone_function"):
        models.clone_model(model, clone_function=lambda layer: layer)


def _fitted_pair():
    import keras
    bigtrain.clear_session()
    kmodel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model = Sequential([B.Input((4,)), B.Dense(2)])
    model.set_weights(kmodel.get_weights())
    for m in (kmodel, model):
        m.compile("sgd", "mse", metrics=["mae"])
    return kmodel, model


def _results(model) -> dict:
    return {k: float(v) for k, v in model.get_metrics_result().items()}


def test_model_metrics_hold_the_latest_calls_values_as_keras():
    kmodel, model = _fitted_pair()
    assert [m.name for m in model.metrics] == [m.name for m in kmodel.metrics] == \
        ["loss", "compile_metrics"]
    for m in (kmodel, model):  # a fit that validates leaves the validation's values
        m.fit(X, Y, epochs=2, shuffle=False, validation_data=(X[:10], Y[:10]), verbose=0)
    _close(_results(model), _results(kmodel))
    np.testing.assert_allclose(model.metrics[0].result(), float(kmodel.metrics[0].result()),
                               rtol=1e-5)
    assert list(model.metrics[1].result()) == ["mae"]
    for m in (kmodel, model):
        m.fit(X, Y, epochs=1, shuffle=False, verbose=0)
    _close(_results(model), _results(kmodel))
    for m in (kmodel, model):
        m.train_on_batch(X, Y)
    _close(_results(model), _results(kmodel))
    for m in (kmodel, model):
        m.evaluate(X, Y, verbose=0)
    _close(_results(model), _results(kmodel))
    for m in (kmodel, model):
        m.reset_metrics()
    _close(_results(model), _results(kmodel))
    assert _results(model) == {"loss": 0.0, "mae": 0.0}


def test_graph_attributes_and_a_feature_extractor_as_keras():
    import keras
    bigtrain.clear_session()
    ki, i = keras.Input((4,), name="x"), B.Input((4,), name="x")
    kbase = keras.Model(ki, keras.layers.Dense(2, name="o")(keras.layers.Dense(3, name="h")(ki)))
    base = Model(i, B.Dense(2, name="o")(B.Dense(3, name="h")(i)))
    base.set_weights(kbase.get_weights())
    for attr in ("input_shape", "output_shape", "built"):
        assert getattr(base, attr) == getattr(kbase, attr), attr
    assert len(base.inputs) == len(kbase.inputs) == 1 and len(base.outputs) == 1
    # Keras's transfer-learning idiom: a model from the base's input to an inner layer
    features = Model(base.input, base.get_layer("h").output)
    kfeatures = keras.Model(kbase.input, kbase.get_layer("h").output)
    np.testing.assert_allclose(features.predict(X), kfeatures.predict(X, verbose=0), atol=1e-6)
    assert features.output_shape == kfeatures.output_shape == (None, 3)
    assert base.get_layer("o").input is base.get_layer("h").output
    assert base.layers[0].output is base.layers[0].input is base.input  # the InputLayer
    stack = Sequential([B.Input((4,)), B.Dense(3, name="a"), B.Dense(2, name="b")])
    assert stack.input_shape == (None, 4) and stack.output_shape == (None, 2)
    assert Model(stack.input, stack.layers[0].output).output_shape == (None, 3)
    unbuilt = Sequential([B.Dense(2)])
    assert unbuilt.built is False
    with pytest.raises(AttributeError):
        unbuilt.inputs
    with pytest.raises(AttributeError):
        B.Dense(3).output
    _, dicts = dict_pair()
    assert sorted(dicts.output) == ["aa", "zz"] and dicts.input_shape == [(None, 4), (None, 3)]
