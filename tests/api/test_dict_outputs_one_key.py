"""A dict-output module compiled with a loss for one key (as a Hugging Face model's
{"logits": ...}) trains as Keras trains a model whose dict of outputs has that one key:
History has "loss" and the metric's own name, values equal to Keras's."""
import keras
import numpy as np
import torch

from bigtrain.models import Model
from tests.api.dict_module import DictOut

RNG = np.random.default_rng(1)
X = RNG.normal(size=(20, 4)).astype("float32")
YA = RNG.normal(size=(20, 2)).astype("float32")
FIT = dict(epochs=2, batch_size=8, shuffle=False, verbose=0)


def _keras_twin(net: DictOut) -> keras.Model:
    inp = keras.Input((4,))
    h, a = keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)
    model = keras.Model(inp, {"a": a(h(inp))})
    for layer, lin in ((h, net.h), (a, net.a)):
        layer.set_weights([lin.weight.detach().numpy().T, lin.bias.detach().numpy()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"a": "mse"},
                  metrics={"a": ["mae"]})
    return model


def test_a_loss_for_one_key_trains_and_logs_as_keras():
    torch.manual_seed(0)
    model = Model(DictOut())
    model.compile(optimizer="sgd", learning_rate=0.1, loss={"a": "mse"}, metrics={"a": ["mae"]})
    kmodel = _keras_twin(model.net)
    got = model.fit(X, {"a": YA}, validation_split=0.25, **FIT).history
    want = kmodel.fit(X, {"a": YA}, validation_split=0.25, **FIT).history
    assert set(got) == set(want) == {"loss", "mae", "val_loss", "val_mae"}
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    got = model.evaluate(X, {"a": YA}, return_dict=True)
    want = kmodel.evaluate(X, {"a": YA}, return_dict=True, verbose=0)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(model.predict(X)["a"], kmodel.predict(X, verbose=0)["a"],
                               atol=1e-5)
