"""An Embedding fed an id outside its table says so, naming the layer, the id and the range."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model


@pytest.mark.parametrize("bad", [7, 5, -1])
def test_an_id_out_of_range_is_named_in_predict_and_fit(bad):
    inp = B.Input(shape=(4,), dtype="int64")
    model = Model(inp, B.Dense(1)(B.Flatten()(B.Embedding(5, 3, name="words")(inp))))
    model.compile("sgd", "mse")
    x = np.array([[1, 2, 3, bad]] * 4)
    want = rf"Embedding 'words' got id {bad}, but its input_dim=5 takes ids 0 to 4"
    with pytest.raises(ValueError, match=want):
        model.predict(x)
    with pytest.raises(ValueError, match=want):
        model.fit(x, np.zeros((4, 1), "float32"), verbose=0)
    model.fit(np.array([[1, 2, 3, 4]] * 4), np.zeros((4, 1), "float32"), verbose=0)  # in range
