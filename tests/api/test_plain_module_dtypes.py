"""A plain torch module in another float dtype than float32 (`net.double()`, `.half()`)
gets its float inputs in its own dtype from fit, evaluate, predict and the *_on_batch
calls: a float64 module trains end to end in float64, as a hand-written float64 loop does,
where float64 inputs rounded to float32 stopped it at its first matmul ("mat1 and mat2 must
have the same dtype"). A float32 module still gets float64 arrays as float32."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bigtrain.models import Model

LR = 0.01  # "sgd": Keras's SGD default learning rate


def _data(n=10):
    rng = np.random.RandomState(0)
    return rng.randn(n, 3), rng.randn(n, 1)  # float64 (n, 3), (n, 1)


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(dtype)


def _torch_loop(net, x, y, batch_size, epochs):
    """fit's reference: SGD on the mean squared error, batches in order."""
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for i in range(0, len(xt), batch_size):
            opt.zero_grad()
            nn.functional.mse_loss(net(xt[i:i + batch_size]), yt[i:i + batch_size]).backward()
            opt.step()
    return net


def _assert_weights(net, ref, tol):
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert a.dtype == torch.float64, name
        assert torch.allclose(a, b, rtol=0, atol=tol), (name, (a - b).abs().max())


@pytest.mark.parametrize("source", ["arrays", "dataset"])
def test_float64_fit_matches_float64_torch_loop(source):
    x, y = _data()
    net = _net()
    ref = _torch_loop(copy.deepcopy(net), x, y, batch_size=4, epochs=2)
    model = Model(net).compile(optimizer="sgd", loss="mse")
    if source == "arrays":
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    else:
        ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        model.fit(ds, batch_size=4, epochs=2, shuffle=False, verbose=0)
    _assert_weights(net, ref, 1e-12)
    # the check tells float32 rounding apart: the same loop on inputs rounded to float32
    rounded = _torch_loop(_net(), x.astype(np.float32).astype(np.float64), y, 4, 2)
    assert max((a - b).abs().max() for a, b in
               zip(rounded.state_dict().values(), ref.state_dict().values())) > 1e-10
    out = model.predict(x, batch_size=4, verbose=0)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref(torch.from_numpy(x)).detach().numpy(), rtol=0,
                               atol=1e-12)
    want = nn.functional.mse_loss(ref(torch.from_numpy(x)), torch.from_numpy(y)).item()
    assert model.evaluate(x, y, batch_size=4, verbose=0) == pytest.approx(want, abs=1e-12)


def test_float64_on_batch_calls_match_torch_steps():
    x, y = _data(8)
    net = _net()
    ref = copy.deepcopy(net)
    model = Model(net).compile(optimizer="sgd", loss="mse")
    for _ in range(2):  # the second call reuses the first call's checks
        model.train_on_batch(x, y)
    _torch_loop(ref, x, y, batch_size=8, epochs=2)
    _assert_weights(net, ref, 1e-12)
    want = nn.functional.mse_loss(ref(torch.from_numpy(x)), torch.from_numpy(y)).item()
    for _ in range(2):
        assert model.test_on_batch(x, y) == pytest.approx(want, abs=1e-12)
    out = model.predict_on_batch(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref(torch.from_numpy(x)).detach().numpy(), rtol=0,
                               atol=1e-12)


class _Seen(nn.Module):
    """Records the dtypes of the inputs it is called with: (ids, features)."""

    def __init__(self, dtype):
        super().__init__()
        self.emb, self.lin = nn.Embedding(5, 2).to(dtype), nn.Linear(3, 2).to(dtype)
        self.seen = []

    def forward(self, ids, feats):  # (B,) int, (B, 3) float
        self.seen.append((ids.dtype, feats.dtype))
        return self.emb(ids) + self.lin(feats)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float_inputs_take_weights_dtype_and_integers_stay(dtype):
    """float64 module: float32 arrays too become float64; float32 module: float64 arrays
    become float32, as before; integer ids stay int64 in both."""
    rng = np.random.RandomState(1)
    ids = rng.randint(0, 5, size=6).astype(np.int64)
    for feats in (rng.randn(6, 3), rng.randn(6, 3).astype(np.float32)):
        net = _Seen(dtype)
        model = Model(net).compile(optimizer="sgd", loss="mse")
        model.fit((ids, feats), rng.randn(6, 2), batch_size=3, verbose=0)
        assert model.predict((ids, feats), verbose=0).dtype == \
            (np.float64 if dtype == torch.float64 else np.float32)
        assert set(net.seen) == {(torch.int64, dtype)}


@pytest.mark.parametrize("loss,metric,head,labels", [
    ("mse", "mae", None, "real"),
    ("huber", "mse", None, "real"),
    ("log_cosh", "root_mean_squared_error", None, "real"),
    ("mape", "mean_absolute_percentage_error", None, "real"),
    ("binary_crossentropy", "binary_accuracy", nn.Sigmoid(), "binary"),
    ("categorical_crossentropy", "categorical_accuracy", nn.Softmax(-1), "onehot"),
    ("sparse_categorical_crossentropy", "sparse_categorical_accuracy", nn.Softmax(-1),
     "ids"),
    ("kl_divergence", "auc", nn.Softmax(-1), "onehot"),
])
def test_keras_losses_and_metrics_take_float64_outputs(loss, metric, head, labels):
    """A float64 module's losses and metrics give what its float32 copy gives (to float32
    precision), from float64 outputs and targets."""
    rng = np.random.RandomState(2)
    x = rng.randn(12, 3)
    y = {"real": rng.randn(12, 3), "binary": rng.randint(0, 2, (12, 3)).astype(np.float64),
         "onehot": np.eye(3)[rng.randint(0, 3, 12)], "ids": rng.randint(0, 3, 12)}[labels]
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 3), *([head] if head is not None else []))
    results = []
    for dtype in (torch.float64, torch.float32):
        model = Model(copy.deepcopy(base).to(dtype)).compile(optimizer="sgd", loss=loss,
                                                             metrics=[metric])
        results.append(model.evaluate(x, y, batch_size=4, verbose=0))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_modules_take_their_own_dtype(dtype):
    """float16/bfloat16 weights get float16/bfloat16 inputs (they stopped at the first
    matmul on float32 ones); fit warns that updates in half precision may stall."""
    x, y = _data(8)
    net = _net(dtype)
    model = Model(net).compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        model.train_on_batch(x, y)
    want = net(torch.from_numpy(x).to(dtype)).float().detach().numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0).astype(np.float32), want,
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x).astype(np.float32), want,
                               rtol=0, atol=1e-6)
