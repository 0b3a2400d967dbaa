"""Checkpoints under tensor parallel: save on 2 ranks, resume on 2 ranks, same numbers as
the uninterrupted run. Pipeline and parameter-server strategies refuse fit(checkpoint_dir)
with a reason before anything starts."""
import pytest
import torch

from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff, reference_state


def _run(rank, world_size, name, folder, stop_after):
    import torch.distributed as dist

    from bigtrain.engine.loop import train
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    from tests.parallel.strategy_cases import build
    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size)
    model, task = build("seed", steps=5, batch=40)
    task.checkpoint = CheckpointConfig(folder, every_steps=1)
    if stop_after is not None:
        from bigtrain.callbacks import Callback

        class Stop(Callback):
            main_process_only = False

            def on_train_batch_begin(self, batch, logs=None):
                if batch == stop_after:
                    raise KeyboardInterrupt
        task.callbacks = [Stop()]
    strategy = resolve_strategy(name)
    strategy.setup(env)
    try:
        result = train(task, strategy, model)
    except KeyboardInterrupt:
        return None
    finally:
        strategy.teardown()
    return result.state_dict


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tensor"])
def test_interrupted_run_resumes_under_the_same_layout(tmp_path, name):
    ref = reference_state("seed", steps=5, batch=40)
    folder = str(tmp_path / "ckpt")
    run_ranks(_run, 2, name, folder, 3, timeout=240)
    resumed = run_ranks(_run, 2, name, folder, None, timeout=240)[0]
    assert max_param_diff(ref, resumed) <= 1e-5


@pytest.mark.parametrize("strategy", ["pipeline", "ps"])
def test_strategies_without_engine_checkpoints_refuse_them_up_front(tmp_path, strategy):
    from tests.api.conftest import seed_like_model, teacher_data
    x, y, _ = teacher_data(n=64)
    with pytest.raises(ValueError, match=f"checkpoint_dir.*{strategy}"):
        seed_like_model().fit(x, y, verbose=0, strategy=strategy, devices=2,
                              checkpoint_dir=str(tmp_path / "ck"))
