"""`Model.layers` and a direct `model(x)` as in Keras 3: a functional model lists its
InputLayers, and `model(x)` runs in inference mode unless called with training=True."""
import numpy as np
import torch

import bigtrain.layers as B
from bigtrain.models import Model, Sequential


def _both(build, *shapes):
    """The same functional graph in Keras and bigtrain (bigtrain holding Keras's weights)."""
    import keras
    keras.utils.set_random_seed(0)
    kin = [keras.Input(shape=s) for s in shapes]
    kmodel = keras.Model(kin, build(keras.layers, *kin))
    bin_ = [B.Input(shape=s) for s in shapes]
    model = Model(bin_, build(B, *bin_))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _two_branches(L, a, b):
    return L.Dense(2, name="out")(L.Concatenate()([L.Dense(3, name="da")(a),
                                                   L.Dropout(0.5)(L.Dense(3, name="db")(b))]))


def test_functional_layers_list_input_layers_as_keras():
    kmodel, model = _both(_two_branches, (4,), (5,))
    assert [type(layer).__name__ for layer in model.layers] == \
        [type(layer).__name__ for layer in kmodel.layers]
    named = ("da", "db", "out")  # automatic names hang on the session's counters
    assert [layer.name for layer in model.layers if layer.name in named] == \
        [layer.name for layer in kmodel.layers if layer.name in named]
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]


def test_sequential_layers_leave_the_input_layer_out_as_keras():
    import keras
    kmodel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = Sequential([B.Input((4,)), B.Dense(3)])
    assert [type(layer).__name__ for layer in model.layers] == \
        [type(layer).__name__ for layer in kmodel.layers] == ["Dense"]


def test_direct_call_is_inference_unless_training_true():
    import keras
    kmodel, model = _both(lambda L, x: L.Dense(2)(L.Dropout(0.5)(L.BatchNormalization()(x))),
                          (4,))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    want = keras.ops.convert_to_numpy(kmodel(x))  # moving statistics, no dropout
    got = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), got)
    trained = model(torch.from_numpy(x), training=True).detach().numpy()
    assert np.abs(trained - got).max() > 1e-3  # batch statistics and dropout


def test_direct_call_keeps_a_layer_called_with_training_true():
    inp = B.Input((6,))
    model = Model(inp, B.Dropout(0.5)(inp, training=True))
    x = torch.ones(4, 6)
    assert (model(x) == 0).any()  # as Keras: that Dropout stays on in model(x)
