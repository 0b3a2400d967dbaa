"""Tensor parallelism splits conv output channels and attention heads exactly, and
replicates what it cannot split (bigtrain.parallel.layer_split)."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import (LSTM, Conv1D, Conv2D, Dense, DepthwiseConv2D, Flatten, Input,
                             MultiHeadAttention, Reshape)
from bigtrain.models import Model
from bigtrain.optimizers import SGD
from bigtrain.parallel.tensor_plan import describe_split
from bigtrain.parallel.tensor_parallel import tp_plan
from tests.dist import run_ranks


def _conv_attention_model() -> Model:
    """(6, 6, 2) -> Conv2D(4) relu -> (36, 4) -> 2-head self-attention -> Dense(3) softmax."""
    bigtrain.clear_session()
    torch.manual_seed(0)
    inp = Input(shape=(6, 6, 2))
    h = Reshape((36, 4))(Conv2D(4, 3, padding="same", activation="relu")(inp))
    h = MultiHeadAttention(num_heads=2, key_dim=3)(h, h)
    return Model(inp, Dense(3, activation="softmax")(Flatten()(h)))


def test_plan_splits_what_divides_and_replicates_the_rest():
    inp = Input(shape=(8, 4))
    h = Conv1D(4, 3, name="even")(inp)
    h = Conv1D(3, 3, name="odd")(h)
    h = MultiHeadAttention(num_heads=3, key_dim=2, name="mha3")(h, h)
    out = LSTM(2, name="rnn")(h)
    plan = tp_plan(Model(inp, out).net, 2)
    assert plan["layers.even"] == "split"
    assert plan["layers.odd"] == plan["layers.mha3"] == "replicate"
    lines = "\n".join(describe_split(Model(inp, out).net, 2))
    assert "even: split over 2 ranks" in lines
    assert "odd: replicated (3 output channels do not divide by 2)" in lines
    assert "mha3: replicated (3 heads do not divide by 2)" in lines
    assert "rnn: replicated" in lines
    depthwise = DepthwiseConv2D(3)
    depthwise(Input(shape=(5, 5, 2)))
    assert "grouped" in depthwise.tp_split(2)


def _split_forward_backward(rank, world_size):
    """One rank: the split model's output and gradients against the whole model's."""
    from torch.distributed.device_mesh import init_device_mesh

    from bigtrain.parallel.tensor_parallel import apply_tp
    whole = _conv_attention_model()
    split = _conv_attention_model()
    split.set_weights(whole.get_weights())
    x = torch.randn(4, 6, 6, 2, generator=torch.Generator().manual_seed(1))
    mesh = init_device_mesh("cpu", (world_size,))
    apply_tp(split.net, mesh, tp_plan(split.net, world_size))
    shapes = {k: tuple(v.to_local().shape) for k, v in split.net.state_dict().items()
              if hasattr(v, "to_local")}
    out = {}
    for name, model in (("whole", whole), ("split", split)):
        xi = x.clone().requires_grad_(True)
        y = model.net(xi)
        (y * torch.arange(3.0)).sum().backward()  # a loss every rank computes alike
        grads = {k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad)
                 for k, p in model.net.named_parameters()}
        out[name] = (y.detach(), xi.grad, grads)
    diff = max(float((a - b).abs().max()) for a, b in zip(out["whole"][:2], out["split"][:2]))
    for k, g in out["whole"][2].items():
        diff = max(diff, float((g - out["split"][2][k]).abs().max()))
    return shapes, diff


@pytest.mark.slow
def test_split_layers_give_the_whole_models_outputs_and_gradients():
    results = run_ranks(_split_forward_backward, 2, timeout=120)
    for shapes, diff in results:
        assert diff <= 1e-5
        assert shapes["layers.conv2d.conv.weight"] == (2, 2, 3, 3)  # 4 channels, 2 per rank
        assert shapes["layers.multi_head_attention.query_kernel"] == (4, 1, 3)  # 1 head each
        assert shapes["layers.multi_head_attention.output_kernel"] == (1, 3, 4)


@pytest.mark.slow
def test_fit_with_tensor_parallel_matches_one_process():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 24)
    model = _conv_attention_model()
    start = model.get_weights()
    states = []
    for kwargs in ({}, {"strategy": "tensor", "devices": 2}):
        model.set_weights(start)
        model.compile(optimizer=SGD(learning_rate=0.5),
                      loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, **kwargs)
        states.append(model.get_weights())
    moved = max(np.abs(a - b).max() for a, b in zip(states[0], start))
    assert moved > 1e-3  # the guard: three steps move the weights far beyond the tolerance
    assert max(np.abs(a - b).max() for a, b in zip(*states)) <= 1e-5


def test_plan_printout_says_what_tensor_parallelism_replicates(tmp_path, capsys):
    from bigtrain.cli.main import main
    f = tmp_path / "m.py"
    f.write_text("from bigtrain.layers import Conv1D, Input, LSTM\n"
                 "from bigtrain.models import Model\n"
                 "def build():\n    i = Input(shape=(8, 3))\n"
                 "    return Model(i, LSTM(2)(Conv1D(4, 3, name='c')(i)))\n")
    assert main(["plan", f"{f}:build", "--devices", "2"]) == 0
    out = capsys.readouterr().out
    assert "tensor parallel over 2 ranks splits 1 of 2 layers with weights; replicated: " \
           "layers.lstm (LSTM has no tensor-parallel split)" in out
