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
