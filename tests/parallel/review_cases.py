"""Models the strategy parity tests had not used, and a harness that trains each (model,
strategy, optimizer, fit settings) case on the ranks of one process group and on one process
(built identically in every rank).

The models: a tied embedding/output head, a layer used twice in one forward, a frozen first
layer, prime widths (7, 13, 1001: no width divides by 2 ranks), a learnable 0-dim temperature,
bias-free layers, a (1, 13) row and a one-output head (dim 0 of size 1: one rank's FSDP shard
is empty), weights in a ModuleDict / ParameterList / ParameterDict read by their parent,
a ParameterList inside a block read from above, two inputs (int64 ids and floats), and
even widths that tensor parallelism splits."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain import optimizers as O
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.models import Model

SAMPLES, BATCH = 32, 8  # 4 optimizer steps of 8 samples, 4 per rank on 2 ranks


class Tied(nn.Module):
    """Token ids -> embedding (13 x 7) -> mean -> Linear -> head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(13, 7)
        self.mid = nn.Linear(7, 7)
        self.head = nn.Linear(7, 13, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids).mean(1))))  # (B, 13)


class Twice(nn.Module):
    """One Linear applied twice in a forward."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(7, 7), nn.Linear(7, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.a(torch.tanh(self.a(x)))))


class Frozen(nn.Module):
    """A frozen first layer (requires_grad False), bias-free second one."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(7, 13).requires_grad_(False)
        self.b = nn.Linear(13, 3, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.first(x)))


class Primes(nn.Module):
    """7 -> 13 -> 1001 -> 3, with a learnable 0-dim temperature."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(7, 13), nn.Linear(13, 1001), nn.Linear(1001, 3)
        self.t = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x))))) * self.t


class OneRow(nn.Module):
    """A (1, 13) learned row added to the hidden layer, a one-output head (logits z, -z)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(7, 13)
        self.row = nn.Parameter(torch.randn(1, 13) * 0.1)
        self.head = nn.Linear(13, 1)

    def forward(self, x):
        z = self.head(torch.tanh(self.a(x)) + self.row)  # (B, 1)
        return torch.cat([z, -z], 1)


class Containers(nn.Module):
    """Weights in a ModuleDict, a ParameterList and a ParameterDict, the last two read by the
    parent's forward (they have no forward of their own)."""

    def __init__(self):
        super().__init__()
        self.d = nn.ModuleDict({"a": nn.Linear(7, 13),
                                "b": nn.Sequential(nn.Linear(13, 5), nn.Tanh())})
        self.pl = nn.ParameterList([nn.Parameter(torch.randn(5, 3) * 0.3),
                                    nn.Parameter(torch.zeros(3))])
        self.pd = nn.ParameterDict({"gain": nn.Parameter(torch.ones(3))})

    def forward(self, x):
        h = self.d["b"](torch.tanh(self.d["a"](x)))  # (B, 5)
        return (h @ self.pl[0] + self.pl[1]) * self.pd["gain"]


class Block(nn.Module):
    """A Linear and a gain of its own (so the block is an FSDP unit), with a ParameterList
    of extra biases that the block itself never reads."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(7, 7)
        self.gain = nn.Parameter(torch.ones(7))
        self.extra = nn.ParameterList([nn.Parameter(torch.randn(7) * 0.1)])

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.gain


class ReadFromAbove(nn.Module):
    """The root reads a block's ParameterList item and iterates another's."""

    def __init__(self):
        super().__init__()
        self.b1, self.b2, self.out = Block(), Block(), nn.Linear(7, 3)

    def forward(self, x):
        h = self.b2(self.b1(x) + self.b1.extra[0])
        return self.out(h + sum(p for p in self.b2.extra))


class TwoInputs(nn.Module):
    """int64 ids (B, 4) and floats (B, 7)."""

    def __init__(self):
        super().__init__()
        self.emb, self.dense, self.out = nn.Embedding(13, 5), nn.Linear(7, 5), nn.Linear(10, 3)

    def forward(self, ids, x):
        return self.out(torch.cat([self.emb(ids).mean(1), torch.tanh(self.dense(x))], 1))


class ScalarAlone(nn.Module):
    """A bias-free Linear and a 0-dim temperature: ZeRO gives one of 2 ranks the
    temperature alone."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(7, 3, bias=False)
        self.t = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.w(x) * self.t


class Temperature(nn.Module):
    """x * t, t a learnable 0-dim temperature."""

    def __init__(self):
        super().__init__()
        self.t = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return x * self.t


def even() -> nn.Sequential:
    """7 -> 16 -> 8 -> 3 -> temperature: widths tensor parallelism splits over 2 ranks (it
    keeps the odd ones above whole)."""
    return nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3), Temperature())


MODELS = {"even": even, "scalar_alone": ScalarAlone, "tied": Tied, "twice": Twice, "frozen": Frozen, "primes": Primes, "onerow": OneRow,
          "containers": Containers, "read_from_above": ReadFromAbove, "two_inputs": TwoInputs}


def case_data(kind: str):
    """(x, y) for `kind`: token ids for the tied model, ids and floats for two inputs."""
    rng = np.random.default_rng(0)
    if kind == "tied":
        x = rng.integers(0, 13, (SAMPLES, 5))
        return x, x.sum(1) % 13
    floats = rng.normal(size=(SAMPLES, 7)).astype(np.float32) * 2
    if kind == "two_inputs":
        return [rng.integers(0, 13, (SAMPLES, 4)), floats], rng.integers(0, 3, SAMPLES)
    return floats, rng.integers(0, 2 if kind == "onerow" else 3, SAMPLES)


def optimizer(name: str, kw: tuple):
    """A bigtrain optimizer by Keras name with Keras's arguments `kw` ((key, value) pairs),
    or a torch optimizer class ("torch.Adafactor")."""
    if name.startswith("torch."):
        return getattr(torch.optim, name[len("torch."):])
    table = {"sgd": O.SGD, "adam": O.Adam, "adamw": O.AdamW, "rmsprop": O.RMSprop,
             "adagrad": O.Adagrad, "adadelta": O.Adadelta, "adamax": O.Adamax,
             "nadam": O.Nadam, "lion": O.Lion, "ftrl": O.Ftrl, "lamb": O.Lamb}
    return table[name](**dict(kw))


def build(case: tuple, steps: int | None = None):
    """(model, task) for case = (model kind, strategy, (optimizer name, kw), fit kw):
    one epoch of `steps` (default all) steps, no shuffling."""
    kind, _, (opt, kw), fit_kw = case
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = Model(MODELS[kind]())
    model.compile(optimizer=optimizer(opt, kw), loss=F.cross_entropy)
    x, y = case_data(kind)
    n = SAMPLES if steps is None else steps * BATCH
    x = [a[:n] for a in x] if isinstance(x, list) else x[:n]
    cfg = FitConfig(epochs=1, batch_size=BATCH, verbose=0, shuffle=False, seed=0,
                    **dict(fit_kw))
    return model, make_task(model, prepare_data(model, x, y[:n]), None, cfg, [], split=True)


def reference(case: tuple, steps: int | None = None) -> dict:
    """One process: the final state dict (float64 numpy)."""
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = build(case, steps)
    state = train(task, Strategy(), model).state_dict
    return {k: v.double().numpy() for k, v in state.items()}


def run_cases(rank, world, cases) -> dict:
    """Inside a rank of tests.dist.run_ranks: {repr(case): rank 0's final state (float64
    numpy), or the error's text where the strategy raised (every rank raises alike)}."""
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world,
                  device=torch.device("cpu"))
    out = {}
    for case in cases:
        model, task = build(case)
        strategy = resolve_strategy(case[1])
        strategy.check_model(task.module, world)
        try:
            state = run_rank(task, strategy, model, env).state_dict
        except ValueError as e:
            out[repr(case)] = f"{type(e).__name__}: {e}"
            continue
        out[repr(case)] = {k: v.double().numpy() for k, v in state.items()} if state else None
    return out


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)
