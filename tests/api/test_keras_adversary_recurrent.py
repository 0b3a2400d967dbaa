"""GRU(reset_after=False), Keras 2's default GRU (the reset gate before the recurrent
kernel), held to Keras 3 (torch backend) with every option it combines with."""
import numpy as np
import pytest

from tests.api.harness import keras_parity

TINY = 1e-9  # dropout masks that keep every unit: the training loop's math, deterministic
HOLES = np.array([[3, 0, 2, 4, 0, 1], [1, 2, 0, 0, 3, 0], [4, 4, 4, 4, 4, 1], [2, 0, 0, 1, 0, 0]])


@pytest.mark.parametrize("build", [
    lambda L: L.GRU(3, reset_after=False),
    lambda L: L.GRU(3, reset_after=False, return_sequences=True, go_backwards=True),
    lambda L: L.GRU(3, reset_after=False, use_bias=False),
    lambda L: L.GRU(3, reset_after=False, dropout=TINY, recurrent_dropout=TINY,
                    return_sequences=True),
    lambda L: L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=True),
                              merge_mode="sum"),
], ids=["last", "sequences-backwards", "no-bias", "dropouts", "bidirectional"])
def test_gru_reset_before_matches_keras(build):
    """It was refused: GRU supports ... reset_after=True."""
    keras_parity(build, (5, 4))


def test_gru_reset_before_skips_masked_steps_as_keras():
    keras_parity(lambda L: [L.Embedding(5, 3, mask_zero=True),
                            L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=True)),
                            L.GRU(2, reset_after=False, go_backwards=True)],
                 (6,), input_dtype="int64", x=HOLES)
