"""A one-process checkpoint of a GPT with a tied lm_head resumes under a pipeline.

One process keeps one optimizer entry for the tied weight (under its first name,
`embed.wte.weight`); the pipeline's last stage holds a copy of it as `head.lm_head.weight`
and asked the checkpoint for that name's state. It found none, took the copy for a weight
no step had reached and started it afresh: SGD with momentum then failed inside torch
("expected Tensor as element ... but got NoneType"), and Adam would have stepped the two
copies apart. Both copies now read and write the one entry."""
import contextlib

import torch

from bigtrain.zoo.gpt import GPT, GPTConfig
from tests.dist import run_ranks
from tests.parallel.test_pipeline import gpt_compute_loss, gpt_data, max_diff

CFG = GPTConfig.tiny(n_layer=2)
SAVED_STEPS, STEPS, TOL = 2, 4, 1e-5


def _gpt():
    torch.manual_seed(0)
    return GPT(CFG)


def _optimizer(params, name):
    if name == "adam":
        return torch.optim.Adam(params, lr=0.01)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _one_process(folder, name, steps, save_at=None):
    """Train one process for `steps` steps (saving after `save_at`): the state dict."""
    from bigtrain.engine.checkpoint import Checkpointer, Position
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel.base import Strategy
    model = _gpt()
    opt = _optimizer(model.parameters(), name)
    for step in range(steps):
        x, y = gpt_data(step)
        gpt_compute_loss(model(x), y, None).backward()
        opt.step()
        opt.zero_grad()
        if step + 1 == save_at:
            Checkpointer(CheckpointConfig(folder), Strategy(), model, opt, {}).save(
                Position(0, step, step + 1))
    return {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}


def _pipeline_resume(rank, world_size, folder, name):
    from bigtrain.engine.checkpoint import Checkpointer
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel.base import DistEnv, StepBatch
    from bigtrain.parallel.pipeline import Pipeline
    strategy = Pipeline(stages=2, microbatches=2, split=[2, 2])  # embed+block | block+head
    strategy.setup(DistEnv(rank=rank, world_size=world_size))
    module = strategy.setup_module(_gpt())
    opt = strategy.setup_optimizer(module, lambda ps: _optimizer(ps, name))
    position = Checkpointer(CheckpointConfig(folder), strategy, module, opt, {}).restore()
    for step in range(position.step, STEPS):
        x, y = gpt_data(step)
        strategy.train_step(module, opt, StepBatch([(x, y, None)], [1.0]), gpt_compute_loss,
                            contextlib.nullcontext)
    full = strategy.full_state_dict(module)
    strategy.teardown()
    return {k: v.numpy() for k, v in full.items()} if rank == 0 else None


def _resume_matches_one_process(tmp_path, name):
    folder = str(tmp_path / "ckpt")
    ref = _one_process(folder, name, STEPS, save_at=SAVED_STEPS)
    assert max_diff(ref, _one_process(None, name, SAVED_STEPS)) > 100 * TOL  # steps count
    got = run_ranks(_pipeline_resume, 2, folder, name, timeout=60)[0]
    assert max_diff(ref, got) <= TOL
    assert (got["embed.wte.weight"] == got["head.lm_head.weight"]).all()


def test_a_one_process_checkpoint_resumes_under_a_pipeline_with_momentum(tmp_path):
    _resume_matches_one_process(tmp_path, "sgd")


def test_a_one_process_checkpoint_resumes_under_a_pipeline_with_adam(tmp_path):
    _resume_matches_one_process(tmp_path, "adam")
