"""fit's `cluster=` option is checked before any rank starts (no Ray needed for these)."""
import sys

import numpy as np
import pytest

from bigtrain.launch.ray import check_cluster
from bigtrain.layers import Dense, Input
from bigtrain.models import Model


def test_an_unknown_cluster_is_refused_by_fit_with_what_to_do_instead():
    inp = Input(shape=(3,))
    model = Model(inp, Dense(1)(inp))
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((8, 3), "float32"), np.zeros((8, 1), "float32")
    with pytest.raises(ValueError, match=r"fit\(cluster='slurm'\).*`bigtrain run SCRIPT` on "
                                         r"every rank"):
        model.fit(x, y, verbose=0, strategy="ddp", devices=2, cluster="slurm")


def test_ray_missing_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where it is not installed
    with pytest.raises(ImportError, match=r"pip install 'bigtrain\[ray\]'"):
        check_cluster("ray")


_SCRIPT = """
import numpy as np
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
inp = Input(shape=(3,))
model = Model(inp, Dense(1)(inp))
model.compile(optimizer="sgd", loss="mse")
model.fit(np.ones((8, 3), "float32"), np.ones((8, 1), "float32"), epochs=1, batch_size=8,
          verbose=0, strategy="ddp")
"""


def test_bigtrain_run_ray_sends_the_scripts_fit_to_that_cluster(monkeypatch, tmp_path):
    """`bigtrain run --ray ADDRESS --workers 2 SCRIPT`: the script's fit (no devices=, no
    cluster=) goes to Ray with 2 workers and ray.init() finds ADDRESS (Ray itself is stubbed
    here; tests/launch/test_ray.py trains on a real local Ray instance)."""
    pytest.importorskip("ray.train.torch", reason="Ray Train is not installed")
    import bigtrain.launch.ray as bray
    from bigtrain.cli.main import main
    from bigtrain.engine.loop import run_rank
    from bigtrain.launch.join import local_env
    for name in ("RAY_ADDRESS", bray.CLUSTER_ENV, bray.WORKERS_ENV):
        monkeypatch.setenv(name, "")  # restored (unset) after the test
    seen = {}

    def fake_launch(task, strategy, nprocs, *, model_owner, devices=None, **options):
        seen.update(address=bray.os.environ["RAY_ADDRESS"], nprocs=nprocs, devices=devices,
                    strategy=strategy.name)
        return run_rank(task, strategy, model_owner, local_env("cpu"))

    monkeypatch.setattr(bray, "launch_on_ray", fake_launch)
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    assert main(["run", "--ray", "10.1.2.3:6379", "--workers", "2", str(script)]) == 0
    assert seen == {"address": "10.1.2.3:6379", "nprocs": 2, "devices": 2, "strategy": "ddp"}


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2", "t.py"], "--ray needs the Ray cluster's address"),
    (["--ray", "auto", "--workers", "0", "t.py"], "--workers must be a positive number"),
    (["--ray", "auto", "--nproc-per-node", "2", "t.py"], "torchrun's flags do nothing"),
    (["--ray", "auto"], "no training script"),
])
def test_bigtrain_run_ray_refuses_bad_flags(argv, message):
    from bigtrain.cli.cluster import run_on_ray
    with pytest.raises(SystemExit, match=message):
        run_on_ray(argv, lambda script, args: 0)
