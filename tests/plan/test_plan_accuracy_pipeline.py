"""The pipeline's heaviest rank: the plan against what bigtrain's pipeline ranks hold.

Every pipeline rank keeps the whole model's parameters (it builds the model and its stage
runs only some of the layers); gradients and Adam state are its stage's. The runtime cuts by
layer times it measures, which move with the load of the host, so the plan counts the
heaviest stage of any cut near the best one by FLOPs (bigtrain.plan.stages). Measured: before
each update on each of 2 gloo ranks, the distinct parameter, gradient and optimizer-state
tensors a rank holds, for both cuts of a 3-layer chain (the accumulation copy is transient
and counted by hand).
"""

import pytest
import torch
from torch import nn

from bigtrain.parallel.pipeline_partition import chain_layers
from bigtrain.plan import plan
from bigtrain.plan.stages import LayerFigures, chain_modules, heaviest_stage, pipeline_states
from tests.dist import run_ranks

TOL = 0.15


def _model():
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.set_seed(0)
    # 1.05 M, 4.2 M and 41 k parameters: by FLOPs the best cut is [1, 2] (4.2 M alone), and
    # [2, 1] costs only 1.24 times as much, so a loaded rank's timing can make it
    i = Input(shape=(1024,))
    h = Dense(4096, activation="relu")(Dense(1024, activation="relu")(i))
    model = Model(inputs=i, outputs=Dense(10, activation="softmax")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _held(model) -> int:
    """Bytes of the distinct tensors a rank holds: every parameter of the model it built,
    the gradients and the optimizer's state."""
    tensors = [p for p in model.net.parameters()]
    tensors += [p.grad for p in model.net.parameters() if p.grad is not None]
    tensors += [t for state in model.optimizer.state.values() for t in state.values()
                if isinstance(t, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _held_at_update(rank, world_size):
    """{cut: the most bytes this rank held before an update} for both cuts of the chain."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.callbacks import Callback
    from bigtrain.engine.loop import train
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel.base import DistEnv
    from bigtrain.parallel.pipeline import Pipeline
    out = {}
    for cut in ((1, 2), (2, 1)):
        model = _model()
        x, y = torch.randn(32, 1024), torch.randint(0, 10, (32,))
        task = make_task(model, prepare_data(model, x, y), None,
                         FitConfig(epochs=1, batch_size=16, verbose=0), [])
        strategy = Pipeline(split=list(cut))
        strategy.setup(DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                               local_world_size=world_size))
        held = []

        class AtUpdate(Callback):
            """Before each update: gradients and (from step 2) Adam's state all exist."""
            main_process_only = False

            def on_train_begin(self, logs=None):
                model.optimizer.register_step_pre_hook(lambda *_: held.append(_held(model)))

        task.callbacks = [AtUpdate()]
        train(task, strategy, model)
        strategy.teardown()
        out[cut] = max(held)
    return out


def test_heaviest_stage_of_the_cuts_the_runtime_may_make():
    # costs 1, 4, 1 on 2 stages: the best cuts, [2, 1] and [1, 2], both cost 5; either may
    # come out, so the heaviest stage is the first two layers (6 M parameters)
    layers = [LayerFigures(1_000_000, 1_000_000, 1.0), LayerFigures(5_000_000, 4_000_000, 4.0),
              LayerFigures(10, 10, 1.0)]
    share = heaviest_stage(layers, 2)
    assert (share.params, share.layers) == (6_000_000, (0, 2))
    p, g, o, acc = pipeline_states(layers, 6_000_010, stages=2, param_bytes=4, grad_bytes=4,
                                   optimizer_bytes=8, microbatches=4)
    assert p == 4 * 6_000_010  # the whole model on every rank
    assert (g, o) == (4 * 6_000_000, 8 * 6_000_000)
    assert acc == 4 * 4_000_000  # its biggest tensor's gradient twice while accumulating
    # a cut a slowed rank does not make is not counted
    uniform = [LayerFigures(100, 100, 1.0)] * 8
    # 1 x 5 against 1.5 x 3 is the best cut with rank 1 timed 1.5 x slower: [5, 3]; [6, 2]
    # would need rank 1 timed 2 x slower
    assert heaviest_stage(uniform, 2).params == 500


@pytest.mark.slow
def test_pipeline_heaviest_rank_matches_measured():
    per_rank = run_ranks(_held_at_update, 2, timeout=120)
    net = _model().net
    n = sum(p.numel() for p in net.parameters())
    stage_params = [sum(p.numel() for p in layer.parameters()) for layer in net.chain()]
    for cut in ((1, 2), (2, 1)):  # each rank: the whole model + its stage's grads and Adam
        stages = (stage_params[:cut[0]], stage_params[cut[0]:])
        for rank, held in enumerate(per_rank):
            want = 4 * n + (4 + 8) * sum(stages[rank])  # (+ Adam's 4-byte step counters)
            assert held[cut] == pytest.approx(want, rel=1e-4), (cut, rank, held)
    worst = max(held[cut] for held in per_rank for cut in held)
    est = plan(net, devices=2, batch_size=16, optimizer="adam").get("pipeline")
    assert abs(est.memory.model_states - worst) / worst < TOL, (est.memory, worst)


def _gpt():
    from bigtrain.zoo import GPT, GPTConfig
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32))


class _Wrapper(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.module = inner


def _runtime_chain(model):
    try:
        return [id(m) for _, m in chain_layers(model)]
    except TypeError:  # the pipeline refuses this model
        return None


@pytest.mark.parametrize("build", [lambda: _model().net, _gpt,
                                   lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
                                   lambda: _Wrapper(nn.Sequential(nn.Linear(4, 4))),
                                   lambda: nn.Linear(4, 4)])
def test_the_plan_finds_the_chain_the_runtime_cuts(build):
    model = build()
    mine = chain_modules(model)
    assert (None if mine is None else [id(m) for m in mine]) == _runtime_chain(model)
