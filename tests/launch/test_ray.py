"""`fit(..., cluster="ray")`: the ranks run as Ray Train workers (TorchTrainer) on a local
Ray instance with 2 CPUs; ddp over 2 workers matches one process, and the run record written
by rank 0 shows that 2 ranks trained. Skipped only where Ray Train is not installed."""
import json

import pytest

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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_train_workers_train_ddp_like_one_process(local_ray, tmp_path):
    namespace: dict = {}
    exec("import numpy as np, bigtrain\nfrom bigtrain.layers import Dense, Input\n"
         "from bigtrain.models import Model\n" + TOY_MODEL, namespace)
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    history = model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0,
                        strategy="ddp", devices=2, cluster="ray", run_dir=str(tmp_path / "run"))
    full, one_less = reference_weights(), reference_weights(steps=3)
    assert max_diff(full, one_less) > 1e-3  # the check can tell one step apart
    assert max_diff(model.get_weights(), full) <= 1e-5
    assert len(history.history["loss"]) == 1 and history.epoch == [0]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["world_size"] == 2 and record["device"] == "cpu"

