"""The planner's counts for convolution and recurrent layers against hand formulas."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bigtrain.layers import GRU, LSTM, Conv2D, Embedding, Input, SimpleRNN
from bigtrain.models import Model
from bigtrain.plan import plan, profile_module


def test_conv2d_flops_params_activations():
    # (9, 7, 3) channels-last, 5 filters of 3 x 2, stride 2, same padding -> (5, 4, 5)
    inp = Input(shape=(9, 7, 3))
    model = Model(inp, Conv2D(5, (3, 2), strides=2, padding="same")(inp))
    prof = profile_module(model.net)  # the input comes from the model's Input
    out_positions, filters, kernel, channels = 5 * 4, 5, 3 * 2, 3
    assert prof.forward_flops_per_sample == 2 * out_positions * filters * kernel * channels
    assert prof.n_params == kernel * channels * filters + filters
    assert prof.activation_elems_per_sample == 9 * 7 * 3 + out_positions * filters
    # the same convolution in torch's own layout, counted by torch's FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        # Keras's "same" at stride 2 pads rows 1 + 1 and columns 0 + 1
        F.conv2d(torch.zeros(1, 3, 11, 8), torch.zeros(5, 3, 3, 2), stride=2)
    assert prof.forward_flops_per_sample == counter.get_total_flops()


@pytest.mark.parametrize("layer,gates,states", [(LSTM, 4, 2), (GRU, 3, 1), (SimpleRNN, 1, 1)])
def test_recurrent_flops_are_gates_times_steps(layer, gates, states):
    steps, features, units = 7, 3, 5
    inp = Input(shape=(steps, features))
    model = Model(inp, layer(units)(inp))
    prof = profile_module(model.net)
    # every step: gates x units outputs, each a dot product over features + units
    assert prof.forward_flops_per_sample == 2 * steps * gates * units * (features + units)
    # input, final h, and what autograd keeps per step (gate pre-activations and states)
    assert prof.activation_elems_per_sample == \
        steps * features + units + steps * (gates + states) * units


def test_masked_lstm_model_plans():
    inp = Input(shape=(6,), dtype="int64")
    model = Model(inp, LSTM(4)(Embedding(10, 3, mask_zero=True)(inp)))
    prof = profile_module(model.net)
    assert prof.forward_flops_per_sample == 2 * 6 * 4 * 4 * (3 + 4)
    # the planner takes the model as is (its input comes from the Input), with MFU inputs
    report = plan(model.net, devices=2, batch_size=8)
    assert "ddp" in str(report)
