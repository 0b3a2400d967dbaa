"""A torch module whose dict holds values that are not tensors (None for an absent loss, a
tuple for a cache, as Hugging Face models return): predict gives back the tensors, and a
loss named for such a key is refused with the key and its type."""
import numpy as np
import pytest
import torch
from torch import nn

from bigtrain.models import Model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 4)).astype("float32")
YA = RNG.normal(size=(12, 2)).astype("float32")


class WithExtras(nn.Module):
    """(B, 4) -> {"a": (B, 2), "loss": None, "cache": ((B, 2), (B, 2))}."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x):
        a = self.a(x)
        return {"a": a, "loss": None, "cache": (a, a)}


def _model() -> Model:
    torch.manual_seed(0)
    model = Model(WithExtras())
    model.compile(optimizer="sgd", loss={"a": "mse"})
    return model


def test_fit_and_predict_read_the_tensors_of_the_dict():
    model = _model()
    model.fit(X, {"a": YA}, batch_size=4, epochs=1, verbose=0)
    with torch.no_grad():
        want = model.net.a(torch.from_numpy(X)).numpy()
    for got in (model.predict(X, batch_size=5), model.predict_on_batch(X)):
        assert list(got) == ["a"]  # None and the tuple have no array to give
        np.testing.assert_allclose(got["a"], want, atol=1e-6)


@pytest.mark.parametrize("key", ["loss", "cache"])
def test_a_loss_for_a_value_that_is_no_tensor_is_named(key):
    model = _model()
    model.compile(optimizer="sgd", loss={"a": "mse", key: "mse"})
    with pytest.raises(TypeError, match=rf"loss names \['{key}'\].*no tensor"):
        model.fit(X, {"a": YA, key: YA}, batch_size=4, epochs=1, verbose=0)
