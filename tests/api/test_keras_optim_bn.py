"""RMSprop, Adam, AdamW and BatchNormalization held to Keras 3's arithmetic (torch backend):
where epsilon goes in RMSprop and Adam, RMSprop's momentum and centered variants, and the
biased batch variance in BatchNormalization's moving variance. Small gradients (inputs
scaled by 1e-4) are where the epsilon placement shows; each case also checks that training
moved the weights, so the comparison could fail."""
import keras
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain.api.optimizer_kernels import Adam as KerasAdam, RMSprop as KerasRMSprop
from bigtrain.api.optimizers import get_optimizer
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 6)).astype("float32")
Y = RNG.normal(size=(24, 3)).astype("float32")


def _pair(namespace_layers):
    """The same network in Keras and bigtrain (bigtrain holding Keras's weights)."""
    keras.utils.set_random_seed(0)
    ki = keras.Input(X.shape[1:])
    km = keras.Model(ki, namespace_layers(keras.layers, ki))
    bi = B.Input(X.shape[1:])
    bm = Model(bi, namespace_layers(B, bi))
    bm.set_weights(km.get_weights())
    return km, bm


def _mlp(L, x):
    return L.Dense(3)(L.Dense(7, activation="tanh")(x))


def _fit_both(keras_opt, bigtrain_opt, x=X, y=Y, layers=_mlp, epochs=2, batch_size=8):
    """Weights before, after Keras's fit and after bigtrain's (6 steps by default)."""
    km, bm = _pair(layers)
    w0 = km.get_weights()
    km.compile(optimizer=keras_opt, loss="mse")
    bm.compile(optimizer=bigtrain_opt, loss="mse")
    km.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    bm.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return w0, km.get_weights(), bm.get_weights()


def _assert_same_updates(w0, wk, wb, rtol=1e-4):
    """bigtrain's total update of every weight equals Keras's to rtol of its size."""
    for a, k, b in zip(w0, wk, wb):
        dk, db = k - a, b - a
        scale = float(np.abs(dk).max())
        assert scale > 0, "training did not move a weight: the check could not fail"
        worst = float(np.abs(db - dk).max())
        assert worst <= rtol * scale, f"update differs from Keras by {worst} (size {scale})"


SCALES = [1.0, 1e-4]  # 1e-4: gradients small enough that epsilon dominates


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.5}, {"centered": True},
                                    {"centered": True, "momentum": 0.9}])
def test_rmsprop_matches_keras(kwargs, scale):
    _assert_same_updates(*_fit_both(keras.optimizers.RMSprop(0.01, **kwargs),
                                    bo.RMSprop(0.01, **kwargs), x=X * scale))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["rmsprop", "adam", "adamw"])
def test_keras_names_match_keras(name, scale):
    _assert_same_updates(*_fit_both(name, name, x=X * scale))


@pytest.mark.parametrize("scale", [1e-2, 1e-4])
def test_adam_classes_match_keras(scale):
    _assert_same_updates(*_fit_both(keras.optimizers.Adam(0.01, beta_2=0.99),
                                    bo.Adam(0.01, beta_2=0.99), x=X * scale))
    _assert_same_updates(*_fit_both(keras.optimizers.AdamW(0.01, weight_decay=0.1),
                                    bo.AdamW(0.01, weight_decay=0.1), x=X * scale))
    # Keras's Adam(weight_decay=w) decays before the update (UpdateRules), as AdamW does
    _assert_same_updates(*_fit_both(keras.optimizers.Adam(0.01, weight_decay=0.5),
                                    bo.Adam(0.01, weight_decay=0.5), x=X * scale))


def test_torch_classes_keep_torch_semantics():
    assert get_optimizer(torch.optim.Adam).cls is torch.optim.Adam
    assert get_optimizer(torch.optim.RMSprop(
        [torch.nn.Parameter(torch.zeros(1))], lr=0.1)).cls is torch.optim.RMSprop
    # and a Keras RMSprop step is not torch's (tiny gradients: ~1000x apart)
    steps = []
    for cls in (KerasRMSprop, torch.optim.RMSprop):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = cls([p], lr=0.01, alpha=0.9, eps=1e-7)
        p.grad = torch.full((3,), 1e-6)
        opt.step()
        steps.append(float(p.detach().abs().max()))
    assert steps[1] > 100 * steps[0]


def _run(opt, p, grads):
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach().clone()


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.5, "centered": True}])
def test_rmsprop_per_tensor_path_equals_foreach(kwargs):
    """foreach=False (parameter lists that mix DTensors and plain tensors) is the same
    arithmetic, one tensor at a time."""
    grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    out = []
    for foreach in (True, False):
        p = torch.nn.Parameter(torch.ones(4, 3))
        out.append(_run(KerasRMSprop([p], lr=0.01, foreach=foreach, **kwargs), p, grads))
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("spec", [bo.Adam(0.01), bo.RMSprop(0.01, momentum=0.5)])
def test_state_dict_resume_keeps_keras_updates(spec):
    grads = [torch.randn(5, generator=torch.Generator().manual_seed(i)) * 1e-4
             for i in range(6)]
    p = torch.nn.Parameter(torch.ones(5))
    straight = _run(spec.build([p]), p, grads)
    p = torch.nn.Parameter(torch.ones(5))
    first = spec.build([p])
    _run(first, p, grads[:3])
    saved = first.state_dict()
    resumed = spec.build([p])
    resumed.load_state_dict(saved)
    assert torch.equal(_run(resumed, p, grads[3:]), straight)


def test_adam_keeps_keras_epsilon_and_zero1_rebuilds_it():
    """ZeRO-1 rebuilds the optimizer from its class and defaults: the Keras epsilon must
    come back as given, not as the step-adjusted value."""
    from bigtrain.parallel.zero1 import optimizer_recipe
    spec = get_optimizer("adam")
    p = torch.nn.Parameter(torch.ones(2))
    opt = spec.build([p])
    _run(opt, p, [torch.ones(2)])
    group = opt.state_dict()["param_groups"][0]
    assert group["keras_epsilon"] == 1e-7 and group["eps"] > 1e-7
    cls, kwargs, _ = optimizer_recipe(spec.build)
    assert issubclass(cls, KerasAdam) and kwargs["eps"] == 1e-7 and kwargs["fused"] is True


def _bn_net(momentum):
    return lambda L, x: L.Dense(3)(L.BatchNormalization(momentum=momentum)(x))


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_batchnorm_moving_variance_matches_keras(momentum):
    x = (X * 2 + 1).astype("float32")
    w0, wk, wb = _fit_both(keras.optimizers.SGD(0.01), bo.SGD(0.01), x=x,
                           layers=_bn_net(momentum), epochs=1)
    for name, k, b in zip(["gamma", "beta", "moving_mean", "moving_variance"], wk, wb):
        assert float(np.abs(k - b).max()) <= 1e-5 * max(1.0, float(np.abs(k).max())), name
    assert float(np.abs(wk[3] - w0[3]).max()) > 1e-3  # the moving variance moved


def test_batchnorm_trains_a_last_batch_of_one_sample_as_keras():
    """25 rows at batch 8: the last batch holds one sample (variance 0), which Keras trains
    on and torch's BatchNorm refuses."""
    x, y = (RNG.normal(size=(25, 6)) * 2 + 1).astype("float32"), RNG.normal(size=(25, 3))
    w0, wk, wb = _fit_both(keras.optimizers.SGD(0.01), bo.SGD(0.01), x=x, y=y.astype("float32"),
                           layers=_bn_net(0.5), epochs=2)
    for name, k, b in zip(["gamma", "beta", "moving_mean", "moving_variance", "kernel", "bias"],
                          wk, wb):
        assert float(np.abs(k - b).max()) <= 1e-5 * max(1.0, float(np.abs(k).max())), name


@pytest.mark.parametrize("kwargs", [dict(center=False), dict(scale=False),
                                    dict(center=False, scale=False),
                                    dict(moving_variance_initializer="zeros",
                                         gamma_initializer="zeros", axis=1)])
def test_batchnorm_options_match_keras(kwargs):
    """center/scale drop beta/gamma from the weights as in Keras; the initializers."""
    x = (X * 2 + 1).astype("float32")
    net = lambda L, h: L.Dense(3)(L.BatchNormalization(momentum=0.5, **kwargs)(h))  # noqa: E731
    km, bm = _pair(net)
    assert [w.shape for w in bm.get_weights()] == [w.shape for w in km.get_weights()]
    w0, wk, wb = _fit_both(keras.optimizers.SGD(0.01), bo.SGD(0.01), x=x, layers=net, epochs=1)
    for k, b in zip(wk, wb):
        assert float(np.abs(k - b).max()) <= 1e-5 * max(1.0, float(np.abs(k).max()))


def test_batchnorm_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="synchronized"):
        B.BatchNormalization(synchronized=True)
    with pytest.raises(ValueError, match="gamma_initializer"):
        B.BatchNormalization(gamma_initializer="glorot_uniform")
    with pytest.raises(ValueError, match=r"axis=3 is not a feature axis"):
        B.BatchNormalization(axis=3)(B.Input((4, 3)))


def test_batchnorm_4d_input_matches_keras():
    x4 = RNG.normal(size=(6, 4, 4, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    ki = keras.Input((4, 4, 3))
    km = keras.Model(ki, keras.layers.BatchNormalization(momentum=0.5)(ki))
    bi = B.Input((4, 4, 3))
    bm = Model(bi, B.BatchNormalization(momentum=0.5)(bi))
    bm.set_weights(km.get_weights())
    for m in (km, bm):
        m.compile(optimizer="sgd", loss="mse")
        m.fit(x4, x4 * 0, batch_size=6, epochs=2, shuffle=False, verbose=0)
    for k, b in zip(km.get_weights(), bm.get_weights()):
        np.testing.assert_allclose(b, k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bm.predict(x4), km.predict(x4, verbose=0), atol=1e-5)


def test_batchnorm_training_output_and_gradients_are_torchs():
    layer = B.BatchNormalization(momentum=0.9)
    layer(B.Input((5,)))
    layer.train()  # as a torch user trains it (called on its own it infers, as Keras's)
    ref = torch.nn.BatchNorm1d(5, eps=1e-3, momentum=0.1)
    with torch.no_grad():
        for p in (layer.norm.weight, ref.weight):
            p.copy_(torch.linspace(0.5, 1.5, 5))
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, want = layer(xa), ref(xb.reshape(-1, 5)).reshape(x.shape)
    assert torch.allclose(out, want, atol=1e-6)
    (out * x).sum().backward()
    (want * x).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    assert torch.allclose(layer.norm.weight.grad, ref.weight.grad, atol=1e-5)
    var = x.reshape(-1, 5).var(0, unbiased=False)
    assert torch.allclose(layer.norm.running_var, 0.9 + 0.1 * var)  # biased, as Keras
    assert int(layer.norm.num_batches_tracked) == 1
    layer.eval()  # inference: the moving statistics
    with torch.no_grad():
        got = layer(x)
    assert torch.allclose(got, torch.nn.functional.batch_norm(
        x.reshape(-1, 5), layer.norm.running_mean, layer.norm.running_var,
        layer.norm.weight, layer.norm.bias, eps=1e-3).reshape(x.shape))


# ---- Keras's other built-in optimizers, by name and by class ---------------------------------
@pytest.mark.parametrize("name, kwargs", [
    ("adagrad", {}), ("adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.2)),
    ("adadelta", {}), ("adadelta", dict(learning_rate=1.0, rho=0.9)),
    ("adamax", {}), ("adamax", dict(learning_rate=0.01, beta_1=0.8)),
    ("nadam", {}), ("nadam", dict(learning_rate=0.01, beta_2=0.99)),
])
def test_keras_optimizers_by_name_and_class_match_keras(name, kwargs):
    """They were refused ('unknown optimizer'); each now makes Keras's updates."""
    cls = {"adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "Nadam"}
    keras_opt = getattr(keras.optimizers, cls[name])(**kwargs)
    ours = getattr(bo, cls[name])(**kwargs) if kwargs else name
    _assert_same_updates(*_fit_both(keras_opt, ours), rtol=1e-4)


def test_a_keras_optimizer_class_names_a_wrong_argument():
    with pytest.raises(TypeError, match="unexpected arguments.*momentum"):
        bo.Adagrad(momentum=0.9)


def test_an_empty_batch_leaves_batch_normalization_statistics_alone():
    """A rank's empty share or micro-batch made the moving statistics NaN (var_mean of
    no rows); torch's own BatchNorm skips such an update."""
    layer = B.BatchNormalization()
    layer(B.Input((3,)))
    layer.train()
    layer(torch.randn(8, 3))
    mean, var = layer.norm.running_mean.clone(), layer.norm.running_var.clone()
    out = layer(torch.zeros(0, 3))
    assert out.shape == (0, 3)
    assert torch.equal(layer.norm.running_mean, mean) and torch.equal(layer.norm.running_var, var)


def test_a_loaded_adam_counts_its_steps_from_the_loaded_state():
    """A checkpoint without "keras_step" (written before it existed) loaded into an
    optimizer that took a zero step kept count 1: epsilon's schedule restarted."""
    w = torch.nn.Parameter(torch.ones(3))
    first = KerasAdam([w], lr=1e-3, eps=1e-7)
    for _ in range(5):
        w.grad = torch.full((3,), 0.5)
        first.step()
    saved = first.state_dict()
    for g in saved["param_groups"]:
        g.pop("keras_step")
    v = torch.nn.Parameter(torch.ones(3))
    second = KerasAdam([v], lr=1e-3, eps=1e-7)
    v.grad = torch.zeros(3)
    second.step()  # what a checkpoint load does first to create the state
    second.load_state_dict(saved)
    assert second.param_groups[0]["keras_step"] == 5
