"""zero1 steps through ZeroRedundancyOptimizer's public `step()`: hooks registered on the
optimizer fire once per optimizer step, and training matches one process with every
built-in optimizer (plain SGD shows a wrong gradient scale)."""
from functools import partial

from bigtrain.parallel.zero1 import Zero1
from tests.dist import run_ranks
from tests.parallel.sharded_optimizer_cases import STEPS, build, check_parity, run_all

ZERO1 = [("zero1", partial(Zero1))]


def _count_hooks(rank, world):
    import torch.distributed as dist

    from bigtrain.callbacks import Callback
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel.base import DistEnv
    calls = {"pre": 0, "post": 0}

    class Hooks(Callback):
        main_process_only = False

        def on_train_begin(self, logs=None):
            opt = self.model.optimizer
            opt.register_step_pre_hook(lambda *_: calls.__setitem__("pre", calls["pre"] + 1))
            opt.register_step_post_hook(lambda *_: calls.__setitem__("post", calls["post"] + 1))
    model, task = build("sgd")
    task.callbacks = [Hooks()]
    env = DistEnv(rank=dist.get_rank(), world_size=world, local_rank=rank,
                  local_world_size=world)
    run_rank(task, Zero1(), model, env)
    return calls, run_all(rank, world, ZERO1)


def test_zero1_runs_optimizer_step_so_its_hooks_fire_and_trains_like_one_process():
    (calls, results), (calls1, _) = run_ranks(_count_hooks, 2, timeout=300)
    assert calls == calls1 == {"pre": STEPS, "post": STEPS}
    check_parity(results, ZERO1)
