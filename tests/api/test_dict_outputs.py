"""A torch module whose forward returns a dict of tensors (as Hugging Face models do),
trained with compile(loss={key: ...}) as Keras trains a model with named outputs: the
weights equal a hand-written torch loop's, History equals Keras's for a functional model
with outputs "a" and "b", a key without a loss is not trained on, and predict returns a
dict like the module's."""
import keras
import numpy as np
import pytest
import torch
from torch import nn

from bigtrain.models import Model
from bigtrain.parallel import DataParallel
from tests.api.dict_module import DictOut

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 4)).astype("float32")
YA = RNG.normal(size=(20, 2)).astype("float32")
YB = RNG.integers(0, 3, 20)
LOSS = {"a": "mse", "b": "sparse_categorical_crossentropy"}
FIT = dict(epochs=2, batch_size=8, shuffle=False, verbose=0)


def _compiled(**kw) -> Model:
    torch.manual_seed(0)
    model = Model(DictOut())
    model.compile(optimizer="sgd", learning_rate=0.1, loss=LOSS, loss_weights={"a": 1.0, "b": 0.5},
                  metrics={"b": ["accuracy"]}, **kw)
    return model


def _torch_loop(net: DictOut, epochs: int = 2) -> None:
    """The oracle: the weighted sum of the two losses, SGD, batches in order."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, ya, yb = torch.from_numpy(X), torch.from_numpy(YA), torch.from_numpy(YB)
    for _ in range(epochs):
        for i in range(0, len(X), 8):
            out = net(x[i:i + 8])
            # Keras's sparse_categorical_crossentropy on probabilities clips them to [1e-7, 1-1e-7]
            ce = nn.functional.nll_loss(out["b"].clamp(1e-7, 1 - 1e-7).log(), yb[i:i + 8])
            loss = nn.functional.mse_loss(out["a"], ya[i:i + 8]) + 0.5 * ce
            opt.zero_grad()
            loss.backward()
            opt.step()


def _keras_twin(net: DictOut) -> keras.Model:
    """A Keras functional model with outputs named "a" and "b" and `net`'s weights."""
    inp = keras.Input((4,))
    h = keras.layers.Dense(6, activation="tanh")
    a, b = keras.layers.Dense(2), keras.layers.Dense(3, activation="softmax")
    hidden = h(inp)
    model = keras.Model(inp, {"a": a(hidden), "b": b(hidden)})
    for layer, lin in ((h, net.h), (a, net.a), (b, net.b)):
        layer.set_weights([lin.weight.detach().numpy().T, lin.bias.detach().numpy()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS,
                  loss_weights={"a": 1.0, "b": 0.5}, metrics={"b": ["accuracy"]})
    return model


def test_fit_trains_as_a_torch_loop_and_logs_as_keras():
    model = _compiled()
    ref = DictOut()
    ref.load_state_dict(model.net.state_dict())
    kmodel = _keras_twin(ref)
    c_before = model.net.c.weight.detach().clone()
    history = model.fit(X, {"a": YA, "b": YB}, **FIT).history
    _torch_loop(ref)
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(model.net.state_dict()[key], value, atol=1e-5, err_msg=key)
    assert torch.equal(model.net.c.weight, c_before)  # no loss for "c": not trained on
    want = kmodel.fit(X, {"a": YA, "b": YB}, **FIT).history
    assert set(history) == set(want) == {"loss", "a_loss", "b_loss", "b_accuracy"}
    for key in want:
        np.testing.assert_allclose(history[key], want[key], atol=1e-5, err_msg=key)


def test_evaluate_and_predict_read_the_dict():
    model = _compiled()
    kmodel = _keras_twin(model.net)
    got = model.evaluate(X, {"a": YA, "b": YB, "c": np.zeros((20, 1))}, return_dict=True)
    want = kmodel.evaluate(X, {"a": YA, "b": YB}, verbose=0, return_dict=True)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    pred = model.predict(X, batch_size=8)
    with torch.no_grad():
        direct = model.net(torch.from_numpy(X))
    on_batch = model.predict_on_batch(X)
    for got in (pred, on_batch):
        assert list(got) == ["b", "a", "c"]  # the module's own keys, in its order
        for key, value in direct.items():
            np.testing.assert_allclose(got[key], value.numpy(), atol=1e-6, err_msg=key)


def test_one_loss_for_a_dict_names_the_keys_to_pass():
    torch.manual_seed(0)
    model = Model(DictOut())
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match=r"compile with loss=\{'b': \.\.\., 'a': \.\.\., 'c'"):
        model.fit(X, YA, **FIT)


def test_a_loss_for_a_key_the_module_lacks_is_named():
    model = Model(DictOut())
    model.compile(optimizer="sgd", loss={"a": "mse", "z": "mse"})
    with pytest.raises(ValueError, match=r"loss names \['z'\].*keys \['b', 'a', 'c'\]"):
        model.fit(X, {"a": YA, "z": YA}, **FIT)


def test_recompiling_with_a_tensor_loss_drops_the_keys():
    model = _compiled()
    assert model.output_names == ["a", "b"]
    model.compile(optimizer="sgd", loss="mse")
    assert model.output_names == ["output"]
    assert not model.net._forward_hooks  # the earlier compile's hook is gone


def test_pipeline_is_refused_before_any_rank_starts():
    with pytest.raises(ValueError, match="strategy 'pipeline' cannot train .* strategy='ddp'"):
        _compiled().fit(X, {"a": YA, "b": YB}, strategy="pipeline", devices=2, **FIT)


def _strategy(name: str):
    # "c" has no loss, so its layer gets no gradient: DDP must be told (as for any model
    # whose forward skips parameters); sharded strategies need nothing
    return DataParallel(find_unused_parameters=True) if name == "ddp" else name


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_ranks_train_as_one_process(strategy):
    one = _compiled()
    one.fit(X, {"a": YA, "b": YB}, **FIT)
    two = _compiled()
    history = two.fit(X, {"a": YA, "b": YB}, strategy=_strategy(strategy), devices=2,
                      timeout=60, **FIT).history
    assert set(history) == {"loss", "a_loss", "b_loss", "b_accuracy"}
    for key, value in one.net.state_dict().items():
        np.testing.assert_allclose(two.net.state_dict()[key], value, atol=1e-5, err_msg=key)
