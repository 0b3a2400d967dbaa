"""More edges where a strategy crashed inside torch or needed a clear refusal: weights read
outside their module's forward (a tied output head computed in the parent) under FSDP2 and
tensor parallelism, torch's Rprop on DTensor parameters, optimizers whose step needs a
closure (LBFGS), and layers used only on some steps or some ranks under DDP."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.parallel import DataParallel, Zero1
from bigtrain.parallel.param_reads import outside_uses
from bigtrain.parallel.sharded import shard_units
from bigtrain.parallel.tensor_plan import tp_plan
from bigtrain.zoo.gpt import GPT, MLP, GPTConfig

RNG = np.random.default_rng(0)


def _weights(model):
    return [np.asarray(w, dtype=np.float64) for w in model.get_weights()]


def _fit(make, x, y, compile_kw, **fit_kw):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = make()
    model.compile(**compile_kw)
    model.fit(x, y, verbose=0, epochs=2, batch_size=10, shuffle=False, **fit_kw)
    return model


def _max_diff(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(_weights(a), _weights(b)))


def _parity(make, x, y, strategy, compile_kw, reference=None):
    """Largest weight difference between one process (`reference` or `make`) and
    `strategy` on 2 ranks, after 2 epochs from the same start."""
    one = _fit(reference or make, x, y, compile_kw)
    two = _fit(make, x, y, compile_kw, strategy=strategy, devices=2, watchdog_timeout=30)
    return _max_diff(one, two)


# ---- 1: a weight read outside its module's forward ---------------------------------------
class TiedByHand(nn.Module):
    """Output head = the embedding, applied in the parent's forward; `out.bias` read before
    `out` runs."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.tanh(self.mid(self.emb(x).mean(1))) + self.out.bias
        return F.linear(torch.tanh(self.out(h)), self.emb.weight)  # (B, 20)


class ReadsMlp(nn.Module):
    """A GPT MLP (which declares its tensor-parallel plan) whose c_fc weight the parent
    reads."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP(GPTConfig.tiny(n_embd=8, n_head=2))
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        h = self.mlp(x)
        return self.out(h) + F.linear(h, self.mlp.c_fc.weight[:8])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self._mix(x)

    def _mix(self, x):  # reached from forward: read too
        return torch.tanh(self.lin(x)) + x @ self.lin.weight.t()


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        return self.blocks[1](self.blocks[0](self.inp(x))) + self.blocks[1].lin.bias


class Indexed(nn.Module):
    """Blocks called by a run-time index: no weight read outside a forward."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    def forward(self, x):
        for i in range(len(self.blocks)):
            x = self.blocks[i](x)
        return x


def test_outside_reads_are_found_and_kept_out_of_fsdp_units():
    assert outside_uses(Indexed()) == [] and outside_uses(GPT(GPTConfig.tiny(n_layer=1))) == []
    uses = {(u.user, u.owner) for u in outside_uses(TiedByHand())}
    assert uses == {("", "emb"), ("", "out")}
    model = Nested()
    names = {id(m): n for n, m in model.named_modules()}
    units = [names[id(m)] for m in shard_units(model)]
    # blocks.0 reads its own lin's weight: the block is the unit holding it; blocks.1.lin
    # is read by the root, so neither it nor blocks.1 is a unit
    assert units == ["blocks.0", "inp"]
    plan = tp_plan(ReadsMlp(), 2)
    assert plan["mlp.c_fc"] == plan["mlp.c_proj"] == "replicate"  # the pair stays whole


def test_outside_reads_are_found_in_a_class_without_source():
    # a class sent to the ranks by value (defined in a script) has bytecode, no source
    space = {"nn": nn, "F": F}
    exec("class Head(nn.Module):\n"
         "    def __init__(self):\n"
         "        super().__init__(); self.emb = nn.Embedding(5, 4)\n"
         "    def forward(self, x):\n"
         "        return F.linear(self.emb(x), self.emb.weight)\n", space)
    assert [(u.user, u.owner, u.whole) for u in outside_uses(space["Head"]())] == [
        ("", "emb", False)]


@pytest.mark.parametrize("strategy", ["zero3", "zero2"])
def test_fsdp_trains_a_weight_read_in_the_parents_forward(strategy):
    x = RNG.integers(0, 20, size=(40, 5))
    y = RNG.integers(0, 20, size=40)
    diff = _parity(lambda: Model(TiedByHand()), x, y, strategy,
                   dict(optimizer="adam", loss=F.cross_entropy))
    assert diff < 1e-5


def test_tensor_parallel_trains_a_declared_plan_whose_weight_is_read_outside():
    x = RNG.normal(size=(40, 8)).astype("float32")
    y = RNG.integers(0, 8, size=40)
    diff = _parity(lambda: Model(ReadsMlp()), x, y, "tensor",
                   dict(optimizer="adam", loss=F.cross_entropy))
    assert diff < 1e-5


# ---- 2: torch's Rprop on DTensor parameters; LBFGS refused ---------------------------------
def _dense_model():
    i = Input(shape=(13,))
    h = Dense(8, activation="tanh")(Dense(16, activation="relu")(i))
    return Model(i, Dense(4)(h))


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "tensor"])
def test_rprop_trains_on_sharded_parameters_as_one_process(strategy):
    x = RNG.normal(size=(37, 13)).astype("float32")
    y = RNG.normal(size=(37, 4)).astype("float32")
    one = _fit(_dense_model, x, y, dict(optimizer=torch.optim.Rprop, loss="mse"))
    two = _fit(_dense_model, x, y, dict(optimizer=torch.optim.Rprop, loss="mse"),
               strategy=strategy, devices=2, watchdog_timeout=30)
    assert _max_diff(one, two) < 1e-5
    assert _max_diff(one, _fit(_dense_model, x, y, dict(optimizer="sgd", loss="mse"))) > 1e-3


def test_an_optimizer_whose_step_needs_a_closure_is_refused_before_any_rank(monkeypatch):
    import bigtrain.launch.launcher as launcher

    def no_launch(*args, **kwargs):
        raise AssertionError("a process was started")
    monkeypatch.setattr(launcher, "launch", no_launch)
    x = RNG.normal(size=(8, 13)).astype("float32")
    y = RNG.normal(size=(8, 4)).astype("float32")
    for kw in ({}, {"strategy": "ddp", "devices": 2}):
        model = _dense_model()
        model.compile(optimizer=torch.optim.LBFGS, loss="mse")
        with pytest.raises(ValueError, match="LBFGS needs a closure.*optimizer='adam'"):
            model.fit(x, y, verbose=0, **kw)


# ---- 3: layers used on some steps or some ranks only (DDP) ----------------------------------
class EveryOther(nn.Module):
    """`b` runs on every other training step, on every rank alike."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.training:
            self.calls += 1
            if self.calls % 2:
                h = torch.tanh(self.b(h))
        return self.out(h)


class ByData(nn.Module):
    """`b` or `c` by the sign of the batch's mean feature: ranks may differ in a step."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(self.b(h)) if x[:, 0].mean() > 0 else torch.tanh(self.c(h))
        return self.out(h)


class ByHalf(ByData):
    """One process doing what 2 ranks do: each half of the batch picks its own branch."""

    def forward(self, x):
        n = (x.shape[0] + 1) // 2
        return torch.cat([ByData.forward(self, x[:n]), ByData.forward(self, x[n:])])


X6 = RNG.normal(size=(40, 6)).astype("float32")
Y3 = RNG.normal(size=(40, 3)).astype("float32")


def test_zero1_finds_a_layer_its_first_rows_skip_and_trains_as_one_process():
    """`b` reaches no output of an inference-mode forward of the fit's first rows, so zero1
    builds DDP with find_unused_parameters=True itself (bigtrain.parallel.unused_params)."""
    diff = _parity(lambda: Model(EveryOther()), X6, Y3, "zero1",
                   dict(optimizer="adam", loss="mse"))
    assert diff < 1e-5


@pytest.mark.parametrize("strategy", [DataParallel(find_unused_parameters=True),
                                      Zero1(find_unused_parameters=True)])
def test_a_layer_used_on_some_steps_trains_as_one_process(strategy):
    diff = _parity(lambda: Model(EveryOther()), X6, Y3, strategy,
                   dict(optimizer="adam", loss="mse"))
    assert diff < 1e-5


def test_ranks_taking_different_branches_average_their_gradients():
    halves = X6[:, 0].reshape(-1, 2, 5).mean(axis=2) > 0  # (batch, rank): branch b taken
    assert (halves[:, 0] != halves[:, 1]).any()  # some step has the ranks disagree
    diff = _parity(lambda: Model(ByData()), X6, Y3, DataParallel(find_unused_parameters=True),
                   dict(optimizer="adam", loss="mse"), reference=lambda: Model(ByHalf()))
    assert diff < 1e-5


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_ranks_taking_different_branches_under_sharding_stop_the_fit(strategy):
    """FSDP gathers a layer's weights as it runs: b's gather on one rank paired with c's on
    the other (both 8x8) swapped their shards and trained wrong, with no error."""
    model = Model(ByData())
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(RuntimeError, match=r"step \d+ the ranks ran different layers.*"
                       r"DataParallel\(find_unused_parameters=True\)") as err:
        model.fit(X6, Y3, epochs=1, batch_size=10, shuffle=False, verbose=0,
                  strategy=strategy, devices=2, watchdog_timeout=30)
    assert "got no gradient" not in str(err.value)  # not DDP's hint for a torch error


class ByDataLater(ByData):
    """Every rank takes `b` for 22 training steps, then the batch's sign picks."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        if self.training and self.calls <= 22:
            return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))
        return ByData.forward(self, x)


def test_ranks_parting_after_the_checked_steps_still_stop_the_fit():
    """After its first steps the check compares every 20 steps and when the weights are
    gathered at the end: a difference in the steps between still stops the fit."""
    model = Model(ByDataLater())
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(RuntimeError, match=r"between training steps 21 and 3\d the ranks"):
        model.fit(X6, Y3, epochs=8, batch_size=10, shuffle=False, verbose=0,
                  strategy="zero3", devices=2, watchdog_timeout=30)


def test_a_layer_skipped_on_every_rank_alike_trains_under_zero3_as_one_process():
    """The check compares the ranks' paths, not one step's path with the last one's."""
    diff = _parity(lambda: Model(EveryOther()), X6, Y3, "zero3",
                   dict(optimizer="adam", loss="mse"))
    assert diff < 1e-5


def test_predict_in_a_callback_of_a_zero3_fit_says_why_it_cannot():
    """Callbacks run on rank 0 only; a forward through zero3's split weights needs every
    rank: a clear error, not a gloo mismatch at the end of the fit."""
    import bigtrain.callbacks as cb
    x = RNG.normal(size=(16, 5)).astype("float32")
    y = RNG.integers(0, 2, 16)

    class Peek(cb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.predict(x[:2])
    i = Input(shape=(5,))
    m = Model(i, Dense(2, activation="softmax")(Dense(4)(i)))
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(RuntimeError, match=r"predict\(\) in a callback .* Call predict after"):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, strategy="zero3", devices=2,
              callbacks=[Peek()], timeout=60)


def test_callbacks_of_a_ddp_fit_end_in_the_state_their_rank_copy_reached():
    """The ranks train with copies of the callbacks; the caller's objects get their plain
    state back (EarlyStopping's best, a user's counter), as after a one-process fit."""
    import bigtrain.callbacks as cb
    x = RNG.normal(size=(32, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    class Count(cb.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.seen = 0, []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs += 1
            self.seen.append(round(float(logs["loss"]), 6))

    def run(**kw):
        bigtrain.set_seed(0)
        i = Input(shape=(5,))
        m = Model(i, Dense(2, activation="softmax")(Dense(4)(i)))
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        es, count = cb.EarlyStopping(monitor="loss", patience=50), Count()
        m.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[es, count], **kw)
        return es, count
    es1, c1 = run()
    es2, c2 = run(strategy="ddp", devices=2, timeout=60)
    assert c2.epochs == 3 and c2.seen == pytest.approx(c1.seen, abs=1e-5)
    assert es2.best == pytest.approx(es1.best, abs=1e-5) and es2.best_epoch == es1.best_epoch
