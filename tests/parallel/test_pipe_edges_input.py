"""A first Linear fed (batch, steps, width): its width alone does not give the model's input
shape. The layers are timed on the fit's own inputs when the pipeline is told them, a guess
that the layers refuse falls back to parameter counts, and the stages pass 3-D activations."""
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.base import DistEnv
from bigtrain.parallel.pipeline import Pipeline
from bigtrain.parallel.pipeline_partition import (chain_layers, guessed_layer_costs,
                                                  parameter_costs, sample_input_for)
from tests.dist import run_ranks
from tests.parallel.test_pipeline import BATCH, max_diff, train_reference, train_with

STEPS, TOL = 3, 1e-5


def make_encoder() -> nn.Module:
    torch.manual_seed(0)
    enc = lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)  # noqa: E731
    return nn.Sequential(nn.Linear(8, 8), enc(), enc(), nn.Flatten(), nn.Linear(40, 3))


def seq_data(step):
    g = torch.Generator().manual_seed(700 + step)
    return torch.randn(BATCH, 5, 8, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def ce(out, y, sw):
    return F.cross_entropy(out, y)


def _schedules(rank, world):
    return {s: train_with(rank, world, Pipeline(stages=2, microbatches=2, schedule=s),
                          make_encoder, seq_data, ce, steps=STEPS)[0]
            for s in ("gpipe", "1f1b", "interleaved")}


def test_a_first_linear_over_3d_input_trains_like_one_process():
    ref, _ = train_reference(make_encoder, seq_data, ce, steps=STEPS)
    got = run_ranks(_schedules, 2, timeout=90)[0]
    for schedule, full in got.items():
        assert max_diff(full, ref) <= TOL, schedule


def _timed_on(rank, world):
    model = make_encoder()
    seen = []
    model[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    strategy = Pipeline(stages=2, microbatches=2)
    strategy.validate(world, BATCH)
    strategy.use_input_sample(seq_data(0)[0])  # what fit hands over before setup_module
    strategy.setup(DistEnv(rank=rank, world_size=world))
    strategy.setup_module(model)
    strategy.teardown()
    return seen, strategy.layer_costs


def test_layers_are_timed_on_the_fits_inputs():
    (seen, costs), _ = run_ranks(_timed_on, 2, timeout=60)
    assert seen and set(seen) == {(2, 5, 8)}  # the timing rows, not a (2, 8) guess
    weights = parameter_costs(chain_layers(make_encoder()))
    assert all(0 < c < 1 for row in costs for c in row) and costs[0] != weights  # seconds


def test_a_guess_the_layers_refuse_weighs_them_by_parameters_and_leaves_no_trace():
    model = make_encoder()
    layers = chain_layers(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guess = sample_input_for(model)
    assert tuple(guess.shape) == (2, 8)  # the first Linear's width: a wrong guess here
    assert guessed_layer_costs(layers, guess, slowdown=2.0) == [
        2.0 * c for c in parameter_costs(layers)]
    assert all(p.grad is None for p in model.parameters())
    assert max_diff(model.state_dict(), before) == 0
    fits = guessed_layer_costs(layers, torch.randn(2, 5, 8))
    assert all(0 < c < 1 for c in fits)  # a sample that fits is timed (seconds)
