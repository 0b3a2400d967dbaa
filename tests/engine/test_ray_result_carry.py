"""fit(cluster="ray") hands back, beside the weights and History, what the caller's next fit
starts from, as a fit on local ranks does: the learning rate the ranks ended with
(ReduceLROnPlateau's) and a learning-rate schedule's step count (bigtrain.engine.carry).
A whole Ray fit (a Ray worker group start costs tens of seconds) is not run here: the record
round trip is what the Ray path adds to the local one."""
import pytest
import torch

from bigtrain.engine.loop import FitResult


def test_the_result_record_keeps_the_rate_and_the_step_count(tmp_path):
    """Rank 0's record held weights and History only: the caller read learning_rate None."""
    pytest.importorskip("safetensors", reason="the record stores weights as safetensors")
    from bigtrain.launch.ray import _load_result, _save_result
    sent = FitResult(history={"loss": [1.0, 0.5]}, epochs=[0, 1],
                     state_dict={"w": torch.arange(6.0).reshape(2, 3)},
                     learning_rate=0.075, iterations=16)
    _save_result(sent, str(tmp_path))
    got = _load_result(str(tmp_path))
    assert (got.learning_rate, got.iterations) == (0.075, 16)
    assert got.history == sent.history
    torch.testing.assert_close(got.state_dict["w"], sent.state_dict["w"])

