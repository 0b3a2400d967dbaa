"""A 0-dim parameter (a learned temperature) under the parameter server: the server keeps
it 0-dim, so its gradient (0-dim too) applies and its optimizer steps it as one process."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.models import Model
from bigtrain.parallel.parameter_server.sharding import build_plan
from bigtrain.parallel.parameter_server.store import ShardStore
from bigtrain.parallel.parameter_server.strategy import ParameterServer


class Tempered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.t = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return self.fc(x) / self.t


def test_store_steps_a_scalar_as_torch_does():
    t = torch.tensor(0.7)
    plan = build_plan([("t", (), False)], servers=1)
    store = ShardStore(plan, server=0, full={"t": t})
    store.build_optimizers(lambda ps: torch.optim.Adam(ps, lr=0.1))
    ref = nn.Parameter(t.clone())
    opt = torch.optim.Adam([ref], lr=0.1)
    for g in (0.5, -2.0):
        store.apply(store.decode_push(torch.tensor([1]), torch.tensor([g])))
        ref.grad = torch.tensor(g)
        opt.step()
    version, value = store.read(0)
    assert version == 2 and torch.equal(value, ref.detach().reshape(1))


def _fit(optimizer, precision, **kw):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = Model(Tempered())
    model.compile(optimizer=optimizer, loss=F.cross_entropy)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, precision=precision,
              **kw)
    return {k: v.detach().double() for k, v in model.net.state_dict().items()}


@pytest.mark.parametrize("optimizer,precision,servers,devices", [
    ("adam", "32", 2, 4),  # 2 workers, 2 servers
    ("sgd", "bf16-mixed", 1, 2),  # 1 worker: the whole batch, bit for bit
])
def test_scalar_parameter_trains_as_one_process(optimizer, precision, servers, devices):
    one = _fit(optimizer, precision)
    got = _fit(optimizer, precision, strategy=ParameterServer(servers=servers),
               devices=devices, timeout=60, watchdog_timeout=30)
    assert abs(float(one["t"]) - 0.7) > 1e-3  # the temperature trained
    assert max(float((one[k] - got[k]).abs().max()) for k in one) < 1e-6
