"""Pipeline parallelism: parity with one process for each schedule, balancing (also on ranks
of unequal speed, made so by the slow-rank knob), bad input.

The parity harness here (`train_with`, `train_reference`, `max_diff`) is reused by the
tensor-parallel and hybrid tests.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.engine.step import train_step
from bigtrain.parallel.base import DistEnv, StepBatch
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.pipeline import Pipeline
from bigtrain.parallel.pipeline_partition import (balanced_partition, chain_layers,
                                                  device_aware_partition, measure_layer_costs,
                                                  slowest_replica_costs, stage_costs)
from bigtrain.zoo.gpt import GPT, GPTConfig, gpt_loss
from tests.dist import run_ranks

CFG = GPTConfig.tiny()  # 4 layers, n_embd 32, 4 heads, block 16, vocab 64
STEPS, BATCH, LR, TOL = 5, 8, 0.1, 1e-5


def make_gpt() -> nn.Module:
    torch.manual_seed(0)
    return GPT(CFG)


def gpt_data(step):
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randint(0, CFG.vocab_size, (BATCH, CFG.block_size), generator=g),
            torch.randint(0, CFG.vocab_size, (BATCH, CFG.block_size), generator=g))


def gpt_compute_loss(out, y, sw):
    return gpt_loss(out, y, sw)


def make_optimizer(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9)


def train_reference(make_model, data, compute_loss, steps=STEPS):
    """Single-process training on the whole global batch: (state dict, losses)."""
    model = make_model()
    opt = make_optimizer(model.parameters())
    losses = []
    for step in range(steps):
        x, y = data(step)
        loss = compute_loss(model(x), y, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def train_with(rank, world, strategy, make_model, data, compute_loss, steps=STEPS,
               autocast=contextlib.nullcontext):
    """Train with `strategy` on this rank; engine-style: the replica's batch in 2 micros."""
    strategy.validate(world, BATCH)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(make_model())
    opt = strategy.setup_optimizer(module, make_optimizer)
    index, count = strategy.data_shard()
    losses = []
    for step in range(steps):
        x, y = data(step)
        xs, ys = x.chunk(count)[index], y.chunk(count)[index]
        half = xs.shape[0] // 2
        micro = [(xs[:half], ys[:half], None), (xs[half:], ys[half:], None)]
        weights = [half / BATCH * count, (xs.shape[0] - half) / BATCH * count]
        outs, loss = train_step(strategy, StepContext(), module, opt, StepBatch(micro, weights),
                                compute_loss, autocast)
        assert [o.shape[0] for o in outs] == [half, xs.shape[0] - half]
        losses.append(float(loss))
    full = strategy.full_state_dict(module)
    strategy.teardown()
    # numpy pickles by value (torch tensors would travel as shared memory of a dying rank)
    return ({k: v.numpy() for k, v in full.items()} if rank == 0 else None), losses


def max_diff(a: dict, b: dict) -> float:
    """Largest |a - b| over every tensor of two state dicts with the same keys."""
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return max((torch.as_tensor(a[k]).float() - torch.as_tensor(b[k]).float()).abs().max()
               .item() for k in a)


def _schedules(rank, world):
    out = {}
    for schedule in ("gpipe", "1f1b", "interleaved", "zero_bubble"):
        out[schedule] = train_with(rank, world, Pipeline(stages=2, microbatches=4,
                                                         schedule=schedule),
                                   make_gpt, gpt_data, gpt_compute_loss)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    out["bf16"] = train_with(rank, world, Pipeline(stages=2, microbatches=2), make_gpt,
                             gpt_data, gpt_compute_loss, steps=2, autocast=bf16)
    return out


def test_every_schedule_matches_single_process_training():
    ref, ref_losses = train_reference(make_gpt, gpt_data, gpt_compute_loss)
    results = run_ranks(_schedules, 2, timeout=240)
    bf16_full, bf16_losses = results[0].pop("bf16")
    # bf16 autocast runs through the stages: same losses to bf16 precision, not bit-equal
    assert bf16_losses == pytest.approx(ref_losses[:2], abs=0.05)
    assert bf16_losses != pytest.approx(ref_losses[:2], abs=1e-6)
    for schedule, (full, losses) in results[0].items():
        assert max_diff(full, ref) <= TOL, schedule
        # the loss is broadcast from the last stage: every rank reports the same mean
        assert losses == results[1][schedule][1], schedule
        assert losses == pytest.approx(ref_losses, abs=1e-5), schedule
    # the tied lm_head / embedding copies (first and last stage) stayed identical
    full = results[0]["1f1b"][0]
    assert (full["embed.wte.weight"] == full["head.lm_head.weight"]).all()


def _chain_split_ckpt(rank, world):
    trained = train_with(rank, world, Pipeline(stages=2, microbatches=2, schedule="1f1b",
                                               split=[1, 3], activation_checkpointing=True),
                         make_chain, chain_data, chain_loss)
    strategy = Pipeline(stages=2, microbatches=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(make_chain())
    with torch.no_grad():
        out = module(chain_data(0)[0][:5])  # forward only; 5 rows padded to 2 micro-batches
    strategy.teardown()
    return trained, out.numpy()


def make_chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.Linear(12, 3))


def chain_data(step):
    g = torch.Generator().manual_seed(2000 + step)
    return torch.randn(BATCH, 20, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def chain_loss(out, y, sw):
    return F.cross_entropy(out, y)


def test_sequential_with_manual_split_and_checkpointing_matches():
    ref, ref_losses = train_reference(make_chain, chain_data, chain_loss)
    ((full, losses), out0), (_, out1) = run_ranks(_chain_split_ckpt, 2, timeout=120)
    assert max_diff(full, ref) <= TOL
    assert losses == pytest.approx(ref_losses, abs=1e-5)
    with torch.no_grad():
        expected = make_chain()(chain_data(0)[0][:5])
    for out in (out0, out1):  # calling the pipelined module: every rank gets the output
        assert torch.allclose(torch.as_tensor(out), expected, atol=1e-6)


def test_balanced_partition_minimises_the_slowest_stage():
    assert balanced_partition([1, 4, 4, 4, 4, 2], 3) == [2, 2, 2]
    assert balanced_partition([10, 1, 1, 1], 2) == [1, 3]
    assert balanced_partition([1, 1, 1, 1], 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="non-empty stages"):
        balanced_partition([1, 2], 3)


def test_device_aware_partition_gives_the_faster_device_more_layers():
    equal, slow1 = [1.0] * 8, [3.0] * 8  # rank 1 takes 3x as long for every layer
    assert device_aware_partition([equal, slow1], [0, 1]) == [6, 2]
    assert device_aware_partition([equal, equal], [0, 1]) == [4, 4]
    assert device_aware_partition([slow1, equal], [0, 1]) == [2, 6]
    # interleaved placement: stages 0, 2 on rank 0 and 1, 3 on rank 1
    assert device_aware_partition([equal, slow1], [0, 1, 0, 1]) == [3, 1, 3, 1]
    # one owner for every stage is the plain balanced partition
    costs = [1, 4, 4, 4, 4, 2]
    assert device_aware_partition([costs], [0, 0, 0]) == balanced_partition(costs, 3)
    # each stage is priced on its own device: stage 0 on the slow rank 1 takes the three light
    # layers (3 x 3), the heavy head goes to the fast rank 0 (9); [1, 3] would cost 1+1+9
    assert device_aware_partition([[1, 1, 1, 9], [3, 3, 3, 27]], [1, 0]) == [3, 1]
    with pytest.raises(ValueError, match="one row of 8"):
        device_aware_partition([equal, [1.0] * 7], [0, 1])
    with pytest.raises(ValueError, match="must index its 2 rows"):
        device_aware_partition([equal, slow1], [0, 2])


def test_slowest_replica_prices_each_pipeline_coordinate():
    # ranks 0, 1 are two replicas of pipeline rank 0; rank 2 is pipeline rank 1
    rows = slowest_replica_costs([[1, 5, 1], [2, 1, 1], [4, 4, 4]], owner_of_rank=[0, 0, 1])
    assert rows == [[2.0, 5.0, 1.0], [4.0, 4.0, 4.0]]


def test_slow_knob_sleeps_its_factor_minus_one_times_the_call(monkeypatch):
    from bigtrain.parallel import slow_ranks as knob

    class Clock:  # a fake clock: every perf_counter() call advances 2 s
        now, slept = 0.0, []

        def perf_counter(self):
            self.now += 2.0
            return self.now

        def sleep(self, s):
            self.slept.append(s)

    clock = Clock()
    monkeypatch.setattr(knob, "time", clock)
    assert knob.slowed(lambda a: a + 1, 3.0)(1) == 2
    assert clock.slept == [4.0]  # the call took 2 s: sleep (3 - 1) x 2 s
    fn = lambda: None  # noqa: E731
    assert knob.slowed(fn, 1.0) is fn
    monkeypatch.setenv("BIGTRAIN_SLOW_RANKS", "1:2.5")
    assert Pipeline(stages=2).slow_ranks == {1: 2.5}
    assert Pipeline(stages=2, slow_ranks={}).slow_ranks == {}  # explicit wins
    with pytest.raises(ValueError, match="outside 0..1"):
        Pipeline(stages=2, slow_ranks={2: 3.0}).validate(world_size=2, global_batch_size=8)
    with pytest.raises(ValueError, match=">= 1"):
        Pipeline(stages=2, slow_ranks={1: 0.5})


WIDTH, LAYERS = 256, 8


def make_equal_chain() -> nn.Module:
    """8 equal layers: with rank 1 three times slower the best cut is [6, 2]."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh())
                           for _ in range(LAYERS)])


def equal_chain_data(step):
    g = torch.Generator().manual_seed(3000 + step)
    return torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, WIDTH, generator=g)


def mse_loss(out, y, sw):
    return F.mse_loss(out, y)


def _speed_aware(rank, world):
    g = torch.Generator().manual_seed(7)
    strategy = Pipeline(stages=2, microbatches=4, slow_ranks={1: 3.0},
                        sample_input=torch.randn(64, WIDTH, generator=g))
    full, losses = train_with(rank, world, strategy, make_equal_chain, equal_chain_data,
                              mse_loss)
    return full, losses, strategy.partition, strategy.layer_costs


def test_speed_aware_partition_gives_the_fast_rank_more_layers_and_trains_the_same():
    ref, ref_losses = train_reference(make_equal_chain, equal_chain_data, mse_loss)
    (full, losses, part0, costs0), (_, losses1, part1, costs1) = run_ranks(_speed_aware, 2,
                                                                           timeout=180)
    # every rank saw the same [rank x layer] cost table, so all cut the model alike
    assert costs0 == costs1 and part0 == part1
    assert sum(part0) == LAYERS and part0[0] > part0[1], part0
    assert max_diff(full, ref) <= TOL
    assert losses == losses1 == pytest.approx(ref_losses, abs=1e-5)


def test_measured_partition_differs_by_less_than_one_block():
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(n_layer=6))
    layers = chain_layers(model)
    costs = measure_layer_costs(layers, torch.randint(0, 64, (4, 16)))
    counts = balanced_partition(costs, 2)
    per_stage = stage_costs(costs, counts)
    block_costs = [c for (name, _), c in zip(layers, costs) if name.startswith("blocks.")]
    assert sum(counts) == len(layers) == 8
    assert max(per_stage) - min(per_stage) < max(block_costs)


def test_bad_input_fails_before_any_process_group():
    with pytest.raises(ValueError, match="valid schedules: gpipe, 1f1b"):
        Pipeline(stages=2, schedule="pipedream")
    with pytest.raises(ValueError, match="use a batch size of 8 or 12"):
        Pipeline(stages=2, microbatches=4).validate(world_size=2, global_batch_size=10)
    with pytest.raises(ValueError, match="only 4 blocks"):
        Pipeline(stages=5).check_module(make_gpt(), pp=5)
    with pytest.raises(ValueError, match="only 4 blocks"):  # 3 ranks x 2 virtual stages
        Pipeline(stages=3, schedule="interleaved").check_module(make_gpt(), pp=3)
    with pytest.raises(ValueError, match="split=.* must list 2"):
        Pipeline(stages=2, split=[1, 2, 3]).check_module(make_gpt(), pp=2)
    with pytest.raises(ValueError, match="tp=1 x pp=2"):
        Pipeline(stages=2).validate(world_size=3, global_batch_size=8)
    with pytest.raises(TypeError, match="nn.Sequential"):
        Pipeline(stages=2).check_module(nn.Linear(2, 2), pp=2)


def _broadcast_results(rank, world):
    import types

    import torch.distributed as dist

    from bigtrain.parallel.pipeline_runtime import PipelineRuntime
    rt = types.SimpleNamespace(env=types.SimpleNamespace(device=torch.device("cpu")),
                               last_rank=1, pp_group=dist.group.WORLD)
    g = torch.Generator().manual_seed(5)
    outs = [torch.randn(4, 3, generator=g),                      # header path
            torch.randn(2, 5, generator=g).to(torch.bfloat16),
            torch.randn(2, 3, generator=g, dtype=torch.complex64),  # pickled fallback
            torch.randn(*[1] * 9, 2, generator=g)]                  # 10 dims: fallback
    got = []
    for i, out in enumerate(outs):
        loss = torch.tensor(0.1 * (i + 1), dtype=torch.float32)
        mine = (out, loss) if rank == 1 else (None, None)
        got.append(PipelineRuntime._broadcast_result(rt, *mine))
    return got


def test_last_stage_output_and_loss_reach_every_pipeline_rank():
    first, last = run_ranks(_broadcast_results, 2)
    for (out0, loss0), (out1, loss1) in zip(first, last):
        assert out0.dtype == out1.dtype and torch.equal(out0, out1)
        assert loss0.dtype == torch.float32 and torch.equal(loss0, loss1)


def test_a_stage_of_view_layers_returns_a_tensor_the_schedule_can_detach_in_place():
    # zero_bubble's backward-input step calls detach_() on every stage output; a Flatten-only
    # stage returned a view of its input, which detach_() refuses
    from bigtrain.parallel.pipeline_stage import StageModule
    stage = StageModule(["flatten"], [torch.nn.Flatten()])
    x = torch.randn(4, 8, 16, requires_grad=True)
    out = stage(x)
    assert not out._is_view()
    out.detach_()
    assert torch.equal(out, x.detach().flatten(1))


def test_layer_timing_sample_follows_the_models_input():
    # a Dense after Conv2D/Flatten must not shape the sample the layers are timed on
    from bigtrain.layers import Conv2D, Dense, Embedding, Flatten, Input
    from bigtrain.models import Model
    from bigtrain.parallel.pipeline_partition import sample_input_for as _sample_for
    inp = Input(shape=(6, 6, 1))
    conv = Model(inp, Dense(3)(Flatten()(Conv2D(2, 3)(inp))))
    assert tuple(_sample_for(conv.net).shape) == (2, 6, 6, 1)
    ids = Input(shape=(5,), dtype="int64")
    sample = _sample_for(Model(ids, Dense(2)(Flatten()(Embedding(9, 3)(ids)))).net)
    assert tuple(sample.shape) == (2, 5) and sample.dtype == torch.int64
