"""`fit(..., cluster="ray")`: the ranks run as Ray Train workers (TorchTrainer) on a local
Ray instance with 2 CPUs. Rank 0's worker dies as epoch 1 begins; Ray restarts the group
(max_restarts -> FailureConfig(max_failures)), the run resumes from bigtrain's epoch-0
checkpoint, and ddp over the 2 workers ends on one process's weights; the run record written
by rank 0 shows 2 ranks. One test: every Ray worker group start costs tens of seconds.
Skipped only where Ray Train is not installed."""
import json
import os
import sys

import pytest

from bigtrain.callbacks import Callback
from tests.launch.jobs import TOY_MODEL, max_diff, reference_weights

_WHY = "Ray Train is not installed: pip install 'bigtrain[ray]'"
pytest.importorskip("ray.train.torch", reason=_WHY)
ray = pytest.importorskip("ray", reason=_WHY)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _toy():
    namespace: dict = {}
    exec("import numpy as np, bigtrain\nfrom bigtrain.layers import Dense, Input\n"
         "from bigtrain.models import Model\n" + TOY_MODEL, namespace)
    return namespace["model"], namespace["x"], namespace["y"]


class DieOnceAtEpoch1(Callback):
    """Rank 0's worker process exits when epoch 1 begins, the first time only (a marker
    file remembers): after epoch 0's checkpoint, before epoch 1 trains."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_workers_train_ddp_like_one_process_through_a_restart(local_ray, tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import it
    model, x, y = _toy()
    marker = tmp_path / "died"
    history = model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0,
                        strategy="ddp", devices=2, cluster="ray", max_restarts=1,
                        checkpoint_dir=str(tmp_path / "ckpt"), run_dir=str(tmp_path / "run"),
                        callbacks=[DieOnceAtEpoch1(str(marker))])
    assert marker.exists()  # the first attempt died as epoch 1 began
    assert history.epoch == [1]  # the restarted group resumed from epoch 0's checkpoint
    full, one_less = reference_weights(epochs=2), reference_weights(steps=3, epochs=2)
    assert max_diff(full, one_less) > 1e-3  # the check can tell one step apart
    assert max_diff(model.get_weights(), full) <= 1e-5
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["world_size"] == 2 and record["device"] == "cpu"
