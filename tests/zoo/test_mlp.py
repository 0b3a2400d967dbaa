"""The plain MLP: structure, shapes, validation, and that it actually learns."""
import pytest
import torch
from torch import nn

from bigtrain.zoo import MLP


def test_structure_and_parameter_count():
    model = MLP(20, [16, 8], 3)
    assert [type(m) for m in model.layers] == [nn.Linear, nn.Linear]
    assert [(m.in_features, m.out_features) for m in [*model.layers, model.head]] == \
        [(20, 16), (16, 8), (8, 3)]
    expected = (20 * 16 + 16) + (16 * 8 + 8) + (8 * 3 + 3)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_no_hidden_layers_is_a_linear_model():
    model = MLP(5, [], 2)
    x = torch.randn(4, 5)
    torch.testing.assert_close(model(x), x @ model.head.weight.T + model.head.bias)


def test_forward_matches_hand_written_computation():
    torch.manual_seed(0)
    model = MLP(6, [4], 2, activation="tanh")
    x = torch.randn(3, 6)
    l0, head = model.layers[0], model.head
    expected = torch.tanh(x @ l0.weight.T + l0.bias) @ head.weight.T + head.bias
    torch.testing.assert_close(model(x), expected)
    assert model(torch.randn(2, 7, 6)).shape == (2, 7, 2)  # leading dims are kept


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = MLP(8, [64], 4, dropout=0.5)
    x = torch.randn(16, 8)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_activation_by_class_and_unknown_name():
    assert isinstance(MLP(2, [3], 1, activation=nn.GELU).act, nn.GELU)
    with pytest.raises(ValueError, match="Unknown activation 'swishy'"):
        MLP(2, [3], 1, activation="swishy")


@pytest.mark.parametrize("args", [(0, [4], 2), (3, [0], 2), (3, [4], -1), (3, [2.5], 2)])
def test_rejects_bad_widths(args):
    with pytest.raises(ValueError, match="positive ints"):
        MLP(*args)


def test_rejects_bad_dropout_and_wrong_input_width():
    with pytest.raises(ValueError, match="dropout"):
        MLP(3, [4], 2, dropout=1.0)
    with pytest.raises(ValueError, match="last dimension is 3"):
        MLP(3, [4], 2)(torch.zeros(2, 5))


def test_learns_xor():
    torch.manual_seed(0)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    model = MLP(2, [16], 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert torch.equal(model(x).argmax(1), y)
