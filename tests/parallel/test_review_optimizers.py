"""Every built-in optimizer under zero1/zero2/zero3/fsdp_offload, Keras's gradient clipping
under every data-parallel, sharded and tensor-parallel strategy, and clipping with
accumulate_steps and bf16-mixed under the sharded ones, on models whose weights do not
split evenly (a 0-dim temperature, widths 13 and 1001, a (1, 13) row and a one-output head,
which leave one rank's FSDP shard of a tensor empty), against one process on 2 ranks.

A global norm computed per shard instead of over the whole model, a per-variable norm taken
over one rank's rows, or a norm-based rule (Lamb's trust ratio) on a shard would each move
the weights far beyond the tolerance: the clip values are small enough that every step
clips (checked against training without clipping)."""
import pytest

from tests.dist import run_ranks
from tests.parallel.review_cases import max_diff, reference, run_cases

TOL = 1e-5
SHARDED = ("zero1", "zero2", "zero3", "fsdp_offload")
#: every optimizer bigtrain names, with the arguments that change its rule
OPTIMIZERS = [
    ("sgd", (("learning_rate", 0.1), ("momentum", 0.9), ("nesterov", True))),
    ("rmsprop", (("momentum", 0.5), ("centered", True))), ("adagrad", ()),
    ("adadelta", (("learning_rate", 1.0),)), ("adamax", ()), ("nadam", ()),
    ("adam", (("amsgrad", True),)), ("adamw", ()), ("lion", ()),
    ("ftrl", (("learning_rate", 0.1),)), ("lamb", (("learning_rate", 0.01),))]
CLIPS = [("sgd", (("learning_rate", 0.5), ("global_clipnorm", 0.05))),
         ("sgd", (("learning_rate", 0.5), ("clipnorm", 0.02))),
         ("sgd", (("learning_rate", 0.5), ("clipvalue", 0.003))),
         ("lamb", (("learning_rate", 0.01), ("global_clipnorm", 0.05))),
         ("adamw", (("learning_rate", 0.01), ("global_clipnorm", 0.05), ("use_ema", True),
                    ("ema_overwrite_frequency", 2)))]
#: bf16: steps large enough that one step fewer, or a norm taken over one rank's half of
#: the squares (a clip value / sqrt(2)), moves the weights 5x beyond bf16's rounding
BF16_CLIPS = [("sgd", (("learning_rate", 2.0), ("global_clipnorm", 0.05))),
              ("sgd", (("learning_rate", 2.0), ("clipnorm", 0.02)))]


def _check(cases, tol=TOL, apart=10) -> None:
    """Every case on 2 ranks within `tol` of one process, where one step fewer is more
    than `apart` x `tol` away."""
    got = run_ranks(run_cases, 2, cases, timeout=120)[0]
    bad, refs = {}, {}
    for case in cases:
        key = (case[0], case[2], case[3])
        if key not in refs:
            refs[key] = reference(case)
            assert max_diff(refs[key], reference(case, steps=3)) > apart * tol, key
        state = got[repr(case)]
        diff = max_diff(refs[key], state) if isinstance(state, dict) else state
        if not isinstance(diff, float) or diff > tol:
            bad[repr(case)] = diff
    assert not bad, bad


@pytest.mark.slow  # 44 cases on 2 ranks: 10-20 s each
@pytest.mark.parametrize("kind", ["primes", "onerow"])
def test_every_optimizer_under_every_sharded_strategy(kind):
    _check([(kind, s, opt, ()) for s in SHARDED for opt in OPTIMIZERS])


def test_the_clip_values_clip():
    for opt, kw in CLIPS[:3]:
        plain = tuple(a for a in kw if a[0] == "learning_rate")
        clipped, free = reference(("primes", None, (opt, kw), ())), \
            reference(("primes", None, (opt, plain), ()))
        assert max_diff(clipped, free) > 1e-2, kw


@pytest.mark.parametrize("kind", ["primes", "onerow", "even"])  # even: tensor splits it
def test_clipping_under_every_splitting_strategy(kind):
    strategies = ("ddp", "ddp_cpu_optimizer", "tensor") + SHARDED
    _check([(kind, s, opt, ()) for s in strategies for opt in CLIPS])


def test_clipping_with_accumulation_under_sharding():
    _check([(kind, s, opt, (("accumulate_steps", 2),)) for kind in ("primes", "onerow")
            for s in SHARDED for opt in CLIPS[:4]])


def test_clipping_with_bf16_under_sharding():
    """The ranks' halves of a batch round apart from the whole batch (as under ddp), and
    FSDP casts the weights where one process autocasts ops: bf16's tolerance, 1e-3."""
    bf16 = (("precision", "bf16-mixed"),)
    tol = 1e-3
    for kind in ("primes", "onerow"):
        for (opt, kw), half in zip(BF16_CLIPS, (0.05 / 2 ** 0.5, 0.02 / 2 ** 0.5)):
            wrong = kw[:1] + ((kw[1][0], half),)
            assert max_diff(reference((kind, None, (opt, kw), bf16)),
                            reference((kind, None, (opt, wrong), bf16))) > 4 * tol
    _check([(kind, s, opt, bf16) for kind in ("primes", "onerow") for s in SHARDED
            for opt in BF16_CLIPS], tol, apart=5)
