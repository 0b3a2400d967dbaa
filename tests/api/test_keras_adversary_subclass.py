"""A user's own Layer subclass written for Keras (add_weight in build, shapes with the
batch axis, call(x, training=None), sublayers) runs unchanged on bigtrain's Layer and
trains as Keras 3 (torch backend) does. Each class below is written once and built on
`keras.layers.Layer` and on `bigtrain.layers.Layer`."""
import keras
import numpy as np
import pytest
from keras import ops

import bigtrain.layers as B
from bigtrain.models import Model, Sequential, load_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 3, 5)).astype("float32")
Y = RNG.normal(size=(16, 2)).astype("float32")


def _classes(L):
    """The custom layers, on the namespace `L` (keras.layers or bigtrain.layers)."""
    class ScaledLinear(L.Layer):
        def __init__(self, units=4, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):  # Keras's shape: (None, steps, features)
            self.steps = input_shape[1]
            self.scale = self.add_weight(shape=(), initializer="ones", trainable=False,
                                         name="scale")
            self.w = self.add_weight(shape=(input_shape[-1], self.units),
                                     initializer="random_normal", name="kernel")
            self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x):
            return (ops.matmul(x, self.w) + self.b) * self.scale / self.steps

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    class NoisyInTraining(L.Layer):
        def call(self, x, training=None):
            return x * 3.0 if training else x

    class Head(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = L.Dense(3, activation="tanh")
            self.out = L.Dense(2)

        def call(self, x):
            return self.out(self.hidden(ops.mean(x, axis=1)))

    class Pairs(L.Layer):
        def call(self, x):
            return ops.concatenate([x, x * x], axis=-1)

        def compute_output_shape(self, input_shape):  # Keras's shape, batch first
            return (input_shape[0], input_shape[1], 2 * input_shape[2])

    return ScaledLinear, NoisyInTraining, Head, Pairs


def _model(L, make_input, model_cls):
    scaled, noisy, head, pairs = _classes(L)
    inp = make_input((3, 5))
    out = head()(noisy()(pairs()(scaled(4)(inp))))
    return model_cls(inp, out)


def test_a_keras_custom_layer_builds_predicts_and_trains_as_keras():
    """bigtrain's Layer had no add_weight (AttributeError), passed build shapes without
    the batch axis, gave a layer without compute_output_shape its input's shape (its
    sublayers unbuilt, so untrained and missing from get_weights) and never told
    call(x, training=None) the mode."""
    keras.utils.set_random_seed(0)
    kmodel = _model(keras.layers, keras.Input, keras.Model)
    model = _model(B, B.Input, Model)
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]
    assert model.output_shapes == [(2,)]
    assert len(model.trainable_weights) == len(kmodel.trainable_weights) == 6
    model.set_weights(kmodel.get_weights())
    np.testing.assert_allclose(model.predict(X), kmodel.predict(X, verbose=0), atol=1e-6)
    for m in (kmodel, model):
        m.compile(optimizer="sgd", loss="mse")
    kh = kmodel.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    bh = model.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(bh.history["loss"], kh.history["loss"], rtol=1e-5)
    for got, want in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_non_trainable_weights_stay_fixed_and_the_model_saves(tmp_path):
    scaled = _classes(B)[0]
    model = Sequential([B.Input((3, 5)), scaled(2, name="scaled")])
    layer = model.get_layer("scaled")
    model.trainable = False
    model.trainable = True
    assert [w.name for w in model.non_trainable_weights] == ["scale"]
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]
    model.compile(optimizer="adam", loss="mse")
    model.fit(X, np.ones((16, 3, 2), "float32"), epochs=2, verbose=0)
    assert float(layer.scale) == 1.0
    path = str(tmp_path / "m.bigtrain")
    model.save(path)
    loaded = load_model(path, custom_objects={"ScaledLinear": scaled})
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), atol=1e-6)


def test_add_weight_refuses_what_bigtrain_does_not_do():
    class Bad(B.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 2), dtype="float64")

    with pytest.raises(ValueError, match="add_weight.*dtype"):
        Bad(name="bad")(B.Input((4,)))
