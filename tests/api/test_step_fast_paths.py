"""The per-step fast paths of a chain model's forward, its loss and its optimizer hooks.

A chain graph runs its hook-free bigtrain layers as `layer.call(x)`, a Dense its plain
nn.Linear as `F.linear` (relu then in place), the loss and the Keras optimizer hooks
without helper frames, and the sparse-gradient watch leaves once every gradient is dense.
Each must give exactly what the full calls give: hooks (the user's, torch's global ones,
those strategies register) still run, and training matches the general path bit for bit.
"""
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain import regularizers
from bigtrain.api.optimizers import get_optimizer
from bigtrain.api.regularizers import ADDED, LayerLossTask
from bigtrain.layers import BatchNormalization, Dense, Dropout, Input
from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 12)).astype("float32")
Y = np.eye(4, dtype="float32")[RNG.integers(0, 4, 64)]


def _model(activation="relu", compile_=True):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(12,))
    model = Model(inp, Dense(4, activation="softmax")(Dense(16, activation=activation)(inp)))
    if compile_:
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _python_frames(fn, only=None) -> int:
    """Python function calls made while `fn()` runs (those in files whose path holds
    `only`, when given)."""
    count = 0

    def prof(frame, event, arg):
        nonlocal count
        if event == "call" and (only is None or only in frame.f_code.co_filename):
            count += 1
    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_chain_forward_costs_no_more_frames_than_a_plain_sequential(monkeypatch):
    monkeypatch.setattr(ADDED, "any", False)  # as in a process where no layer added a loss
    model = _model()
    net = model.net
    plain = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.from_numpy(X)
    net(x), plain(x)  # warm caches
    assert _python_frames(lambda: net(x)) <= _python_frames(lambda: plain(x))


def _with_global_hook(fn):
    """`fn()` with a no-op global forward hook: every module runs its full call."""
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        return fn()
    finally:
        handle.remove()


def _deeper_model():
    """Dense(relu) -> Dropout -> BatchNormalization -> Dense(softmax): random draws and
    moving statistics on the fast path too."""
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(12,))
    h = BatchNormalization()(Dropout(0.3)(Dense(16, activation="relu")(inp)))
    model = Model(inp, Dense(4, activation="softmax")(h))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("make", [_model, _deeper_model])
def test_fast_and_full_calls_train_to_identical_weights_and_logs(make):
    def run():
        model = make()
        hist = model.fit(X, Y, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
        return model.get_weights(), hist.history
    fast_w, fast_h = run()
    full_w, full_h = _with_global_hook(run)
    for a, b in zip(fast_w, full_w):
        np.testing.assert_array_equal(a, b)
    assert fast_h == full_h


def test_hooks_on_layers_and_linears_still_run_and_change_the_output():
    model = _model()
    net = model.net
    dense1, dense2 = net._chain_layers
    x = torch.from_numpy(X[:5])
    base = net(x).detach().clone()
    seen = []
    h1 = dense1.register_forward_hook(lambda m, i, o: seen.append("dense") or o * 0.0)
    h2 = dense2.linear.register_forward_pre_hook(lambda m, i: seen.append("linear"))
    try:
        out = net(x)
    finally:
        h1.remove(), h2.remove()
    assert seen == ["dense", "linear"]
    # dense1 gives zeros: dense2 sees relu(0) = 0 and returns softmax(bias)
    expected = torch.softmax(dense2.linear.bias, -1).expand_as(out)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(net(x), base)  # hooks gone: the fast path again


def test_global_hooks_see_every_module():
    model = _model()
    x = torch.from_numpy(X[:5])
    seen = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, i: seen.append(type(m).__name__))
    try:
        model.net(x)
    finally:
        handle.remove()
    assert seen == ["GraphModule", "Dense", "Linear", "Dense", "Linear"]


def test_backward_hook_on_a_linear_sees_its_gradient():
    model = _model()
    linear = model.net._chain_layers[0].linear
    grads = []
    handle = linear.register_full_backward_hook(lambda m, gi, go: grads.append(go[0]))
    try:
        model.net(torch.from_numpy(X[:5])).sum().backward()
    finally:
        handle.remove()
    assert len(grads) == 1 and grads[0].shape == (5, 16)


@pytest.mark.parametrize("shape", [(7, 12), (3, 5, 12)])
def test_relu_in_place_matches_out_of_place_values_and_gradients(shape):
    x = torch.randn(*shape, requires_grad=True)
    fast = Dense(16, activation="relu")
    fast(x[..., :12].detach())  # build
    slow = Dense(16, activation=lambda t: F.relu(t))  # a callable: applied out of place
    slow(x.detach())
    slow.linear.load_state_dict(fast.linear.state_dict())
    outs, grads = [], []
    for layer in (fast, slow):
        xi = x.detach().clone().requires_grad_(True)
        out = layer(xi)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append((xi.grad, layer.linear.weight.grad, layer.linear.bias.grad))
    assert (outs[0] == 0).any() and (outs[0] > 0).any()
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_relu_runs_in_place_only_when_no_hook_holds_the_linear_output():
    layer = Dense(8, activation="relu")
    x = torch.randn(4, 6)
    assert layer(x)._version == 1  # relu_ on F.linear's own output
    kept = []
    handle = layer.linear.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        out = layer(x)
    finally:
        handle.remove()
    assert out._version == 0 and (kept[0] < 0).any()  # the hook's tensor left as it was


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_a_linear_weight_set_as_a_plain_tensor_is_the_one_used(name):
    """`del linear.weight; linear.weight = tensor` (functional weights, as MAML-style
    code sets them) leaves it out of `_parameters`: nn.Linear's forward reads the
    attribute, and so must the Dense."""
    layer = Dense(3, activation="relu")
    x = torch.randn(4, 6)
    layer(x)
    value = getattr(layer.linear, name).detach() * 2 + 0.5
    delattr(layer.linear, name)
    setattr(layer.linear, name, value)
    w, b = layer.linear.weight, layer.linear.bias
    torch.testing.assert_close(layer(x), torch.relu(x @ w.T + b), rtol=0, atol=0)


def test_activity_regularizer_set_after_build_still_adds_its_loss():
    model = _model()
    x = torch.from_numpy(X[:8])
    model.net(x)
    assert model.losses == []
    model.net._chain_layers[0].activity_regularizer = regularizers.L2(0.1)
    out = model.net._chain_layers[0](x)  # the penalty of the hidden activations
    model.net(x)
    assert len(model.losses) == 1
    torch.testing.assert_close(model.losses[0], 0.1 * out.square().sum() / 8)


def test_an_input_with_a_time_step_mask_passes_it_on():
    model = _model(compile_=False)
    x = torch.from_numpy(X[:3])
    x._keras_mask = torch.tensor([True, False, True])
    out = model.net(x)
    assert torch.equal(out._keras_mask, x._keras_mask)


def test_the_step_loss_calls_no_helper_frames(monkeypatch):
    monkeypatch.setattr(ADDED, "any", False)  # as in a process where no layer added a loss
    model = _model()
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    spec = model.compiled.losses[0]
    y_pred = torch.randn(16, 4, requires_grad=True)
    ids = torch.from_numpy(Y[:16].argmax(-1))
    assert _python_frames(lambda: spec(ids, y_pred), "bigtrain") == 1  # __call__ only
    torch.testing.assert_close(spec(ids, y_pred), F.cross_entropy(y_pred, ids))
    task = SimpleNamespace(losses=[spec], loss_weights=[1.0], module=model.net)
    loss = LayerLossTask.compute_loss(task, y_pred, ids, None)
    torch.testing.assert_close(loss, F.cross_entropy(y_pred, ids))
    # the task's compute_loss and the LossSpec: no walk for added losses, no super() frame
    assert _python_frames(lambda: LayerLossTask.compute_loss(task, y_pred, ids, None),
                          "bigtrain") == 2


def test_keras_adam_step_hooks_call_no_helper_frames():
    w = nn.Parameter(torch.ones(3))
    opt = get_optimizer("adam").build([w])  # the Keras Adam a compile builds
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    w.grad = torch.ones(3)
    # _counted_step and Keras's epsilon: one frame each, the sparse watch gone
    assert _python_frames(opt.step, "bigtrain") == 2
    assert int(opt.iterations) == 3


def test_sparse_watch_leaves_once_every_gradient_is_dense_and_stays_for_sparse_ones():
    from bigtrain.api.sparse_grads import _SparseWatch, watch_sparse_grads

    def watches(opt):
        return [h for h in opt._optimizer_step_pre_hooks.values() if isinstance(h, _SparseWatch)]

    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    watch_sparse_grads(opt, rules_active=False)
    opt.step()  # no gradient yet: still watching
    assert len(watches(opt)) == 1
    w.grad = torch.ones(3)
    opt.step()
    assert watches(opt) == []
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.9))

    emb = nn.Embedding(5, 2, sparse=True)
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    watch_sparse_grads(opt, rules_active=False)
    for step in range(2):
        opt.zero_grad()
        emb(torch.tensor([1, 3])).sum().backward()
        assert emb.weight.grad.is_sparse
        if step == 0:
            with pytest.warns(UserWarning, match="made dense"):
                opt.step()
        else:
            opt.step()
    assert len(watches(opt)) == 1  # a sparse gradient: it keeps densifying

    w = nn.Parameter(torch.ones(3))  # a hook after the watch: it stays (cannot leave safely)
    opt = torch.optim.SGD([w], lr=0.1)
    watch_sparse_grads(opt, rules_active=False)
    opt.register_step_pre_hook(lambda o, a, k: None)
    w.grad = torch.ones(3)
    opt.step(), opt.step()
    assert len(watches(opt)) == 1
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.8))

