"""Exactly one-hot labels become class ids for a categorical cross-entropy on logits, and
nothing else does: soft, negative, doubled, NaN or empty rows stay as given."""
import math

import pytest
import torch

from bigtrain.api.inputs import _compact_one_hot
from bigtrain.api.losses import LossSpec
from bigtrain.api.loss_functions import categorical_crossentropy


def _spec():
    return LossSpec("categorical_crossentropy", categorical_crossentropy, from_logits=True)


def test_exact_one_hot_becomes_ids():
    y = torch.eye(4)[torch.tensor([2, 0, 3, 3, 1])]
    ids = _compact_one_hot(y, _spec(), ["accuracy"])
    assert ids.dtype == torch.int64 and ids.tolist() == [2, 0, 3, 3, 1]


@pytest.mark.parametrize("rows", [
    [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]],            # a soft row
    [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]],           # n non-zeros in all, not one per row
    [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],            # two ones in a row
    [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],            # a row's one is 2
    [[math.nan, 0.0, 0.0], [0.0, 1.0, 0.0]],       # NaN
    [[math.inf, 0.0, 0.0], [0.0, 1.0, 0.0]],
    [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]],            # an all-zero row
])
def test_other_labels_stay(rows):
    y = torch.tensor(rows)
    assert _compact_one_hot(y, _spec(), ["accuracy"]) is y


def test_no_classes_and_no_rows():
    assert _compact_one_hot(torch.zeros(3, 0), _spec(), []).shape == (3, 0)
    assert _compact_one_hot(torch.zeros(0, 4), _spec(), []).shape == (0,)
