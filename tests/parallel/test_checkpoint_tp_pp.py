"""Checkpoints under tensor and pipeline parallelism: save on 2 ranks, resume on 2 ranks
(under the same strategy, or a pipeline checkpoint under ddp), same numbers as the
uninterrupted run; a GPT pipeline checkpoint (tied embedding on the first and last stage)
loads in one process. The parameter server refuses fit(checkpoint_dir) with a reason before
anything starts (its servers checkpoint themselves)."""
import contextlib

import pytest
import torch

from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff, reference_state


def _run(rank, world_size, name, folder, stop_after, resume_name=None):
    import torch.distributed as dist

    from bigtrain.engine.loop import train
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    from tests.parallel.strategy_cases import build
    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size)
    model, task = build("seed", steps=5, batch=40)
    task.checkpoint = CheckpointConfig(folder, every_steps=1)
    if stop_after is None:  # other initial weights: only a real resume ends at the reference
        with torch.no_grad():
            for p in task.module.parameters():
                p.add_(1.0)
    if stop_after is not None:
        from bigtrain.callbacks import Callback

        class Stop(Callback):
            main_process_only = False

            def on_train_batch_begin(self, batch, logs=None):
                if batch == stop_after:
                    raise KeyboardInterrupt
        task.callbacks = [Stop()]
    strategy = resolve_strategy(resume_name if stop_after is None and resume_name else name)
    strategy.setup(env)
    try:
        result = train(task, strategy, model)
    except KeyboardInterrupt:
        return None
    finally:
        strategy.teardown()
    return result.state_dict


@pytest.mark.slow
@pytest.mark.parametrize("name,resume_name", [("tensor", None), ("pipeline", None),
                                              ("pipeline", "ddp")])
def test_interrupted_run_resumes(tmp_path, name, resume_name):
    ref = reference_state("seed", steps=5, batch=40)
    folder = str(tmp_path / "ckpt")
    run_ranks(_run, 2, name, folder, 3, timeout=240)
    resumed = run_ranks(_run, 2, name, folder, None, resume_name, timeout=240)[0]
    assert max_param_diff(ref, resumed) <= 1e-5


@pytest.mark.slow
def test_dp_by_pp_resumes_on_four_ranks(tmp_path):
    from bigtrain.parallel.hybrid import Hybrid
    ref = reference_state("seed", steps=5, batch=40)
    folder = str(tmp_path / "ckpt")
    hybrid = Hybrid(dp=2, pp=2, microbatches=2)
    run_ranks(_run, 4, hybrid, folder, 3, timeout=240)
    resumed = run_ranks(_run, 4, hybrid, folder, None, timeout=240)[0]
    assert max_param_diff(ref, resumed) <= 1e-5


def _gpt_pipeline_save(rank, world_size, folder):
    from bigtrain.engine.checkpoint import Checkpointer, Position
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel.base import DistEnv, StepBatch
    from bigtrain.parallel.pipeline import Pipeline
    from tests.parallel.test_pipeline import gpt_compute_loss, gpt_data, make_gpt, make_optimizer
    strategy = Pipeline(stages=2, microbatches=2)
    strategy.setup(DistEnv(rank=rank, world_size=world_size))
    module = strategy.setup_module(make_gpt())
    opt = strategy.setup_optimizer(module, make_optimizer)
    for step in range(2):
        x, y = gpt_data(step)
        strategy.train_step(module, opt, StepBatch([(x, y, None)], [1.0]), gpt_compute_loss,
                            contextlib.nullcontext)
    Checkpointer(CheckpointConfig(folder), strategy, module, opt, {}).save(Position(1, 0, 2))
    full = strategy.full_state_dict(module)
    strategy.teardown()
    return {k: v.numpy() for k, v in full.items()} if rank == 0 else None


def test_a_gpt_pipeline_checkpoint_loads_in_one_process(tmp_path):
    from bigtrain.engine.checkpoint import Checkpointer
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel.base import Strategy
    from tests.parallel.test_pipeline import make_gpt, make_optimizer
    folder = str(tmp_path / "ckpt")
    saved = run_ranks(_gpt_pipeline_save, 2, folder, timeout=240)[0]
    strategy = Strategy()
    model = make_gpt()
    torch.nn.init.zeros_(model.embed.wte.weight)  # proves the load: trained weights come back
    opt = make_optimizer(model.parameters())
    position = Checkpointer(CheckpointConfig(folder), strategy, model, opt, {}).restore()
    assert position.step == 2  # restore() also re-checks the model state's checksum
    state = model.state_dict()
    assert sorted(state) == sorted(saved)
    for k, v in saved.items():
        assert torch.equal(state[k], torch.from_numpy(v)), k
    assert model.head.lm_head.weight is model.embed.wte.weight  # still tied
    assert all(s["momentum_buffer"] is not None for s in opt.state.values())


@pytest.mark.parametrize("strategy", ["ps"])
def test_strategies_without_engine_checkpoints_refuse_them_up_front(tmp_path, strategy):
    from tests.api.conftest import seed_like_model, teacher_data
    x, y, _ = teacher_data(n=64)
    with pytest.raises(ValueError, match=f"checkpoint_dir.*{strategy}"):
        seed_like_model().fit(x, y, verbose=0, strategy=strategy, devices=2,
                              checkpoint_dir=str(tmp_path / "ck"))
