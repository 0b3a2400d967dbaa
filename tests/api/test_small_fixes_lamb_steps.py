"""Lamb counts each tensor's steps on the host: it read its `step` tensor (on the parameter's
device after a load there) for every tensor of every step, a device sync each. The update
is unchanged: checked against the rule written out, with per-tensor step counts, across a
step where one tensor has no gradient and across a state_dict load."""
import copy

import numpy as np
import torch

from bigtrain.api.optimizer_per_tensor import Lamb

B1, B2, EPS, LR = 0.9, 0.999, 1e-7, 0.01


def _reference(w, grads):
    """Keras's Lamb, float64 numpy, on one tensor: its weights after the steps `grads`
    (None: no gradient that step, which does not count as one of its steps)."""
    w, m, v, t = w.astype(np.float64), 0.0, 0.0, 0
    for g in grads:
        if g is None:
            continue
        t += 1
        m = m + (g - m) * (1 - B1)
        v = v + (g * g - v) * (1 - B2)
        u = (m / (1 - B1 ** t)) / (np.sqrt(v / (1 - B2 ** t)) + EPS)
        wn, un = np.linalg.norm(w), np.linalg.norm(u)
        w = w - (wn / un if wn > 0 and un > 0 else 1.0) * LR * u
    return w


def _grads(steps, shape, skip=()):
    rng = np.random.default_rng(len(shape))
    return [None if i in skip else rng.normal(size=shape) for i in range(steps)]


def _step(opt, params, grads, i):
    for p, g in zip(params, grads):
        p.grad = None if g[i] is None else torch.tensor(g[i], dtype=torch.float32)
    opt.step()


def test_lamb_follows_the_rule_with_per_tensor_counts_and_across_a_load():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(4, 3)), rng.normal(size=5)]
    grads = [_grads(6, (4, 3)), _grads(6, (5,), skip={1, 2})]
    params = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)) for w in start]
    opt = Lamb(params, lr=LR, betas=(B1, B2), eps=EPS)
    for i in range(3):
        _step(opt, params, grads, i)
    saved = copy.deepcopy(opt.state_dict())  # (state_dict shares the state's tensors)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    again = Lamb(copies, lr=LR, betas=(B1, B2), eps=EPS)
    again.load_state_dict(saved)
    for i in range(3, 6):
        _step(opt, params, grads, i)
        _step(again, copies, grads, i)
    for w, g, p, c in zip(start, grads, params, copies):
        want = _reference(w, g)
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c.detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_lamb_does_not_read_its_step_tensors_once_counting(monkeypatch):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    opt = Lamb(params)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt.step()  # the first step may read each count once
    steps = {id(opt.state[p]["step"]) for p in params}

    def no_read(real):
        def read(self, *args):
            if id(self) in steps:
                raise AssertionError("Lamb read a step tensor (a device sync on a GPU)")
            return real(self, *args)
        return read
    for name in ("__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, no_read(getattr(torch.Tensor, name)))
    for _ in range(3):
        opt.step()
    monkeypatch.undo()
    assert [float(opt.state[p]["step"]) for p in params] == [4.0, 4.0]


def test_lamb_rereads_a_step_tensor_written_in_place():
    """A count loaded in place (as distributed checkpoints load) is the one the next step
    uses, as one loaded as a new tensor is."""
    def stepped(set_count):
        w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5))
        opt = Lamb([w], lr=0.1, eps=0.3)  # eps comparable to sqrt(v): t changes u's direction
        for scale in (0.5, -0.3, 0.5):
            if scale == 0.5 and opt.state:
                set_count(opt.state[w])
            w.grad = torch.linspace(0.0, 1.0, 5) * scale
            opt.step()
        return w.detach()

    in_place = stepped(lambda state: state["step"].copy_(torch.tensor(40.0)))
    replaced = stepped(lambda state: state.update(step=torch.tensor(40.0)))
    kept = stepped(lambda state: None)
    assert torch.equal(in_place, replaced)
    assert not torch.allclose(in_place, kept)  # the count matters to this step
