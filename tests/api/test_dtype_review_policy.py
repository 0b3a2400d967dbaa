"""Dtype settings fit does not follow are said before training: a Keras global dtype policy
(bigtrain's layers do not read Keras's global state) and half-precision trainable weights
(their updates round away)."""
import os
import warnings

import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


@pytest.fixture
def keras_policy():
    """Set Keras's global policy (and floatx) for one test, restored after it."""
    policy, floatx = keras.mixed_precision.global_policy(), keras.config.floatx()
    yield
    keras.mixed_precision.set_global_policy(policy)
    keras.config.set_floatx(floatx)


def _fit(precision="32", half=None, category=None):
    """The messages of the warnings of `category` (default: DtypeWarning) a short fit gave."""
    if category is None:
        from bigtrain.launch.precision_checks import DtypeWarning as category
    bigtrain.clear_session()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    inp = Input((3,))
    model = Model(inp, Dense(1)(inp))
    if half is not None:
        model.net.to(half)
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, verbose=0, precision=precision)
    return [str(w.message) for w in seen if issubclass(w.category, category)]


@pytest.mark.parametrize("policy, precision", [("mixed_bfloat16", "bf16-mixed"),
                                               ("mixed_float16", "16-mixed")])
def test_keras_mixed_policy_is_named_with_fits_switch(keras_policy, policy, precision):
    keras.mixed_precision.set_global_policy(policy)
    (note,) = _fit("32")
    assert repr(policy) in note and f"precision={precision!r}" in note
    assert _fit(precision) == []  # asked for both ways: nothing to say


def test_keras_float64_floatx_is_named(keras_policy):
    keras.config.set_floatx("float64")
    (note,) = _fit("32")
    assert "'float64'" in note and "compute in float32" in note


def test_half_precision_trainable_weights_warn(keras_policy):
    import torch
    assert _fit() == []
    (note,) = _fit("bf16-mixed", half=torch.bfloat16)
    assert "bfloat16" in note and "model.net.float()" in note


def test_get_weights_of_bfloat16_weights_are_float32_arrays():
    import torch
    bigtrain.clear_session()
    inp = Input((3,))
    model = Model(inp, Dense(2, name="d")(inp))
    model.net.to(torch.bfloat16)  # numpy has no bfloat16: float32 holds every value
    linear = model.get_layer("d").linear
    want = [linear.weight.detach().float().numpy(), linear.bias.detach().float().numpy()]
    for got in (model.get_weights(), model.get_layer("d").get_weights()):
        assert [w.dtype for w in got] == [np.float32, np.float32]
        np.testing.assert_array_equal(got[0], want[0].T)
        np.testing.assert_array_equal(got[1], want[1])


def test_float16_on_a_slow_cpu_is_probed_and_said_before_training(monkeypatch):
    from bigtrain.plan import bf16
    emulated = bf16.Bf16Probe(fp32_s=0.001, bf16_s=0.02, n=256, native=False,
                              capability="AVX2", dtype="float16")
    msg = bf16.slow_bf16_message("16-mixed", "cpu", emulated)
    assert "precision='16-mixed'" in msg and "float16 matmul took 20.0x" in msg
    assert "avx512_fp16" in msg and "precision='32'" in msg
    assert bf16.slow_bf16_message("bf16-mixed", "cpu", emulated) is None  # not what it timed
    native = bf16.Bf16Probe(0.001, 0.0006, 256, native=True, dtype="float16")
    assert bf16.slow_bf16_message("16-mixed", "cpu", native) is None
    assert bf16.native_bf16_flags("flags : avx2 amx_bf16 avx512_fp16\n",
                                  bf16.NATIVE_FP16_FLAGS) == ("avx512_fp16",)
    real = bf16.probe_float16(n=32, repeats=1)
    assert real.dtype == "float16" and real.bf16_s > 0 and real.fp32_s > 0
    monkeypatch.setattr(bf16, "probe_float16", lambda: emulated)
    (note,) = _fit("16-mixed", category=bf16.SlowBf16Warning)
    assert "float16 matmul took 20.0x" in note
