"""Keras's optimizer options under every strategy that takes them, against one process, with
optimizers beyond SGD: `exclude_from_weight_decay` (resolved against the model, so it names
the same weights where a strategy shards or replaces the parameters), and clipping, weight
decay and the moving average with Adam, RMSprop, Lion, AdamW and Lamb. Strategies that step
copies of the weights (ddp_cpu_optimizer, parameter servers) refuse the exclusion before any
process starts."""
import inspect
import warnings

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain import optimizers as bo
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import schedules
from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff

TOL = 1e-5
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp_offload", "tensor", "pipeline")


def _decay():
    return schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.5)


def _by_name(spec, model):
    spec.exclude_from_weight_decay(var_names=["bias"])


def _by_variable(spec, model):
    spec.exclude_from_weight_decay(var_list=[model.weights[0]])  # the first kernel


# name -> (optimizer, exclusion or None, strategies)
CASES = {
    "adamw_excluded": (lambda: bo.AdamW(0.05, weight_decay=0.3), _by_name, STRATEGIES),
    "sgd_excluded": (lambda: bo.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.3),
                     _by_variable, ("zero1", "zero3", "pipeline")),
}
# rules every strategy already applied exactly, now held with other optimizers (slow)
MORE = {
    "adam_global_clipnorm": (lambda: bo.Adam(0.05, global_clipnorm=0.05), None,
                             tuple(s for s in STRATEGIES if s != "pipeline")),
    "rmsprop_clipnorm": (lambda: bo.RMSprop(_decay(), momentum=0.5, clipnorm=0.02), None,
                         STRATEGIES),
    "lion_decay_ema": (lambda: bo.Lion(_decay(), weight_decay=0.2, use_ema=True,
                                       ema_momentum=0.5, ema_overwrite_frequency=3), None,
                       STRATEGIES),
    "lamb_decay": (lambda: bo.Lamb(0.05, weight_decay=0.2), None, STRATEGIES),
}
ALL = {**CASES, **MORE}


def _data(n=48):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 24)).astype(np.float32), rng.integers(0, 6, n)


def _model():
    inp = Input(shape=(24,))
    return Model(inp, Dense(6, activation="softmax")(Dense(16, activation="relu")(inp)))


def _compiled(case: str, exclude: bool = True):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = _model()
    make, exclusion, _ = ALL[case]
    spec = make()
    if "fused" in inspect.signature(spec.cls).parameters:
        spec.kwargs["fused"] = False  # fused SGD/Adam have no DTensor rule
    if exclusion is not None and exclude:
        exclusion(spec, model)
    model.compile(optimizer=spec, loss="sparse_categorical_crossentropy")
    return model


def _task(case: str, exclude: bool = True):
    model = _compiled(case, exclude)
    cfg = FitConfig(epochs=2, batch_size=8, verbose=0, seed=0, steps_per_epoch=4)
    return model, make_task(model, prepare_data(model, *_data()), None, cfg, [])


def _one_process(case: str, exclude: bool = True) -> dict:
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = _task(case, exclude)
    return train(task, Strategy(), model).state_dict


def _ranks(rank, world_size, cases):
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    out = {}
    for case in cases:
        for name in ALL[case][2]:
            model, task = _task(case)
            env = DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                          local_world_size=world_size, device=torch.device("cpu"))
            out[name, case] = run_rank(task, resolve_strategy(name), model, env).state_dict
    return out if rank == 0 else None


def _check(cases: dict) -> None:
    refs = {case: _one_process(case) for case in cases}
    got = run_ranks(_ranks, 2, list(cases), timeout=300)[0]
    bad = {key: d for key, state in got.items()
           if (d := max_param_diff(refs[key[1]], state)) > TOL}
    assert not bad, bad
    assert len(got) == sum(len(c[2]) for c in cases.values())


@pytest.mark.slow
def test_exclude_from_weight_decay_under_every_strategy():
    """Before, bigtrain's optimizers had no exclude_from_weight_decay (AttributeError)."""
    _check(CASES)
    for case in CASES:  # the exclusion acts (so the check can fail)
        assert max_param_diff(_one_process(case), _one_process(case, exclude=False)) > 100 * TOL


@pytest.mark.slow
def test_rules_with_other_optimizers_under_every_strategy():
    _check(MORE)


@pytest.mark.parametrize("strategy,devices", [("ddp_cpu_optimizer", 2), ("ps", 3)])
def test_strategies_stepping_copies_refuse_the_exclusion_before_starting(strategy, devices):
    model = _compiled("adamw_excluded")
    with pytest.raises(ValueError, match="exclude_from_weight_decay.*drop the exclusion"):
        model.fit(*_data(), batch_size=8, epochs=1, verbose=0, strategy=strategy,
                  devices=devices)


def test_the_ranks_hand_the_average_back():
    """A fit on several processes hands use_ema's average back with its optimizer state:
    the next fit continues it as a second one-process fit does, and does not warn."""
    x, y = _data()
    ref = _compiled("lion_decay_ema")
    for _ in range(2):
        ref.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model = _compiled("lion_decay_ema")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, strategy="ddp",
              devices=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert not [w for w in caught if "average restarts" in str(w.message)]
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(),
                                                     ref.get_weights())) < TOL


def test_the_exclusion_travels_to_the_ranks_fit_starts():
    """fit(devices=2) ships the task to its ranks: the exclusion still names the weights."""
    x, y = _data()
    runs = {}
    for strategy, devices in ((None, None), ("zero3", 2)):
        model = _compiled("adamw_excluded")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, strategy=strategy,
                  devices=devices)
        runs[strategy] = model.net.state_dict()
    assert max_param_diff(runs[None], runs["zero3"]) <= TOL
