"""A fit in this process trains the model's own module: the engine hands back no copy of the
weights (a copy and its load cost 63 ms a call on a 28.7M-parameter GPT), and the model ends
with exactly the weights a run that does copy them back ends with."""
import numpy as np
import torch

import bigtrain
from bigtrain.parallel.base import Strategy as SingleProcess  # registered as "single"
from tests.api.conftest import seed_like_model, teacher_data


def _trained(monkeypatch, copy_back: bool):
    copies = []
    real = SingleProcess.full_state_dict

    def spy(self, module):
        copies.append(1)
        return real(self, module)
    monkeypatch.setattr(SingleProcess, "full_state_dict", spy)
    if copy_back:  # the engine as `bigtrain verify` and the launchers run it
        import bigtrain.launch.runner as runner
        real_run_rank = runner.run_rank

        def run_rank(task, *args):
            task.weights_in_place = False
            return real_run_rank(task, *args)
        monkeypatch.setattr(runner, "run_rank", run_rank)
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = seed_like_model()
    x, y, _ = teacher_data(n=96)
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # the second call continues
    after = model.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # it trained
    monkeypatch.undo()
    return after, len(copies), model


def test_an_in_process_fit_trains_the_module_itself(monkeypatch):
    in_place, copies, model = _trained(monkeypatch, copy_back=False)
    assert copies == 0
    copied, copies_back, _ = _trained(monkeypatch, copy_back=True)
    assert copies_back == 2
    for a, b in zip(in_place, copied):
        np.testing.assert_array_equal(a, b)
    x, _, _ = teacher_data(n=8)
    assert model.predict(x, verbose=0).shape == (8, 4)


def test_only_one_process_training_the_module_itself_skips_the_copy():
    from bigtrain.engine.loop import _trained_in_place

    class Env:
        world_size = 1

    class Strategy:
        env = Env()

        def unwrap(self, module):
            return module
    module = torch.nn.Linear(2, 2)
    assert _trained_in_place(Strategy(), module, module)
    assert not _trained_in_place(Strategy(), torch.nn.Linear(2, 2), module)  # a copy trained
    Env.world_size = 2
    assert not _trained_in_place(Strategy(), module, module)
