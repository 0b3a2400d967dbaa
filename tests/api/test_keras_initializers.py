"""Keras's weight initializers on bigtrain's layers, held against Keras 3 (torch backend).

Random streams differ, so the random initializers are compared by statistics of large
weights (std, mean, largest value) in Keras's layout, for every name and layer type: that
checks the fans of each layer's Keras kernel layout. Deterministic ones (zeros, ones,
constant, identity; orthogonality) are compared exactly. Defaults stay as they were."""
import keras
import numpy as np
import pytest
import torch

from bigtrain import initializers as bi
from bigtrain import layers as bl
from bigtrain.layers import Input
from bigtrain.models import Model

RANDOM = ["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal",
          "lecun_uniform", "random_normal", "random_uniform", "truncated_normal",
          "variance_scaling", "orthogonal"]

TRUNCATED = ["glorot_normal", "he_normal", "lecun_normal", "truncated_normal",
             "variance_scaling"]

# layer type -> (Keras layer, bigtrain layer, input shape, initializer argument names)
LAYERS = {
    "dense": (lambda **a: keras.layers.Dense(300, **a), lambda **a: bl.Dense(300, **a),
              (400,), ["kernel_initializer"]),
    "conv1d": (lambda **a: keras.layers.Conv1D(96, 5, **a), lambda **a: bl.Conv1D(96, 5, **a),
               (12, 40), ["kernel_initializer"]),
    "conv2d": (lambda **a: keras.layers.Conv2D(64, 3, **a), lambda **a: bl.Conv2D(64, 3, **a),
               (8, 8, 48), ["kernel_initializer"]),
    "conv3d": (lambda **a: keras.layers.Conv3D(32, 3, **a), lambda **a: bl.Conv3D(32, 3, **a),
               (4, 4, 4, 24), ["kernel_initializer"]),
    "conv2d_transpose": (lambda **a: keras.layers.Conv2DTranspose(48, 3, **a),
                         lambda **a: bl.Conv2DTranspose(48, 3, **a), (6, 6, 80),
                         ["kernel_initializer"]),
    "depthwise": (lambda **a: keras.layers.DepthwiseConv2D(5, depth_multiplier=8, **a),
                  lambda **a: bl.DepthwiseConv2D(5, depth_multiplier=8, **a), (8, 8, 64),
                  ["depthwise_initializer"]),
    "separable": (lambda **a: keras.layers.SeparableConv2D(128, 3, depth_multiplier=4, **a),
                  lambda **a: bl.SeparableConv2D(128, 3, depth_multiplier=4, **a),
                  (8, 8, 64), ["depthwise_initializer", "pointwise_initializer"]),
    "embedding": (lambda **a: keras.layers.Embedding(1000, 64, **a),
                  lambda **a: bl.Embedding(1000, 64, **a), (5,), ["embeddings_initializer"]),
}


def _keras_weights(make, shape, kw) -> list[np.ndarray]:
    dtype = "int32" if len(shape) == 1 and shape[0] == 5 else "float32"
    layer = make(**kw)
    layer.build((None, *shape)) if dtype == "float32" else layer(keras.Input(shape, dtype=dtype))
    return [np.asarray(w) for w in layer.get_weights()]


def _bigtrain_weights(make, shape, kw) -> list[np.ndarray]:
    dtype = "int64" if len(shape) == 1 and shape[0] == 5 else "float32"
    model = Model(inputs=(x := Input(shape=shape, dtype=dtype)), outputs=make(**kw)(x))
    return model.get_weights()


def _stats(w: np.ndarray) -> tuple[float, float, float]:
    return float(w.std()), float(w.mean()), float(np.abs(w).max())


@pytest.mark.parametrize("layer", list(LAYERS))
def test_random_initializers_have_keras_statistics(layer):
    k_make, b_make, shape, args = LAYERS[layer]
    keras.utils.set_random_seed(0)  # both streams fixed: the check does not flake
    torch.manual_seed(0)
    for name in RANDOM:
        kw = {a: name for a in args}
        for kw_, k, b in zip([kw] * 3, _keras_weights(k_make, shape, kw),
                             _bigtrain_weights(b_make, shape, kw)):
            assert k.shape == b.shape
            if k.ndim == 1:  # the bias: zeros in both
                assert not b.any()
                continue
            (ks, km, kmax), (bs, bm, bmax) = _stats(k), _stats(b)
            assert abs(bs - ks) <= 0.04 * ks, (layer, name, ks, bs)
            assert abs(bm - km) <= 0.1 * ks, (layer, name, km, bm)
            if name.endswith("uniform"):  # the same bound: the largest values agree
                assert kmax * 0.97 <= bmax <= kmax * 1.01, (layer, name, kmax, bmax)
            elif name in TRUNCATED:  # within 2 std of the untruncated normal (Keras's torch
                # backend keeps a draw outside after 4 tries, about 1 in 200,000)
                assert bmax <= 2.0 * max(ks, bs) / 0.8796 * 1.03, (layer, name, bs, bmax)


def test_mha_kernel_fans_are_keras():
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    km = keras.layers.MultiHeadAttention(8, 64, kernel_initializer="he_normal")
    q = keras.Input((10, 256))
    km(q, q)
    x = Input(shape=(10, 256))
    bm = Model(inputs=x, outputs=bl.MultiHeadAttention(8, 64, kernel_initializer="he_normal")(x, x))
    for k, b in zip(km.get_weights(), bm.get_weights()):
        if k.ndim > 1:
            assert abs(b.std() - k.std()) <= 0.04 * k.std(), (k.shape, k.std(), b.std())


def test_classes_with_arguments_match_keras_statistics():
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    cases = [(keras.initializers.RandomNormal(0.1, 0.02), bi.RandomNormal(0.1, 0.02)),
             (keras.initializers.RandomUniform(-0.3, 0.1), bi.RandomUniform(-0.3, 0.1)),
             (keras.initializers.TruncatedNormal(stddev=0.5), bi.TruncatedNormal(stddev=0.5)),
             (keras.initializers.VarianceScaling(3.0, "fan_out", "uniform"),
              bi.VarianceScaling(3.0, "fan_out", "uniform")),
             (keras.initializers.VarianceScaling(0.5, "fan_avg", "untruncated_normal"),
              bi.VarianceScaling(0.5, "fan_avg", "untruncated_normal")),
             (keras.initializers.Orthogonal(gain=2.0), bi.Orthogonal(gain=2.0))]
    for k_init, b_init in cases:
        k = _keras_weights(LAYERS["dense"][0], (400,), {"kernel_initializer": k_init})[0]
        b = _bigtrain_weights(LAYERS["dense"][1], (400,), {"kernel_initializer": b_init})[0]
        (ks, km, _), (bs, bm, _) = _stats(k), _stats(b)
        assert abs(bs - ks) <= 0.04 * ks and abs(bm - km) <= 0.1 * ks, (b_init, ks, bs, km, bm)


@pytest.mark.parametrize("make", [
    lambda: ("constant", keras.initializers.Constant(0.3), bi.Constant(0.3)),
    lambda: ("zeros", "zeros", "zeros"), lambda: ("ones", "ones", "ones"),
    lambda: ("identity", keras.initializers.Identity(2.0), bi.Identity(2.0))])
def test_deterministic_initializers_are_exact(make):
    name, k_init, b_init = make()
    k_bias, b_bias = ("ones", "ones") if name == "identity" else (k_init, b_init)  # 2-D only
    keras_w = _keras_weights(lambda **a: keras.layers.Dense(300, **a), (400,),
                             {"kernel_initializer": k_init, "bias_initializer": k_bias})
    ours = _bigtrain_weights(lambda **a: bl.Dense(300, **a), (400,),
                             {"kernel_initializer": b_init, "bias_initializer": b_bias})
    assert all(np.array_equal(k, b) for k, b in zip(keras_w, ours))


def test_orthogonal_is_orthogonal_in_keras_layout():
    w = _bigtrain_weights(LAYERS["conv2d"][1], (8, 8, 48),
                          {"kernel_initializer": bi.Orthogonal(gain=1.5)})[0]
    flat = w.reshape(-1, w.shape[-1])  # (kh * kw * in, out): orthonormal columns
    assert np.allclose(flat.T @ flat, 2.25 * np.eye(w.shape[-1]), atol=1e-4)


def test_defaults_are_unchanged():
    """The default initializers draw exactly what they drew before (same stream)."""
    for make in (lambda **a: bl.Dense(7, **a), lambda **a: bl.Conv2D(5, 3, **a)):
        torch.manual_seed(3)
        plain = _bigtrain_weights(make, (6, 6, 4), {})
        torch.manual_seed(3)
        named = _bigtrain_weights(make, (6, 6, 4), {"kernel_initializer": "glorot_uniform",
                                                    "bias_initializer": "zeros"})
        assert all(np.array_equal(a, b) for a, b in zip(plain, named))


def test_layer_normalization_center_scale_and_initializers_match_keras():
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    for kw in ({"center": False}, {"scale": False}, {"center": False, "scale": False},
               {"gamma_initializer": keras.initializers.Constant(2.0),
                "beta_initializer": "ones"}):
        bkw = {k: bi.Constant(2.0) if k == "gamma_initializer" else v for k, v in kw.items()}
        kl = keras.layers.LayerNormalization(**kw)
        k_out = keras.ops.convert_to_numpy(kl(x))
        inp = Input(shape=(6,))
        bm = Model(inputs=inp, outputs=bl.LayerNormalization(**bkw)(inp))
        assert [w.shape for w in bm.get_weights()] == [w.shape for w in kl.get_weights()]
        assert np.allclose(bm.predict(x), k_out, atol=1e-5)
    with pytest.raises(ValueError, match="axis=1 is not supported"):
        Model(inputs=(i := Input(shape=(3, 6))), outputs=bl.LayerNormalization(axis=1)(i))


def test_initializer_config_round_trips_through_save(tmp_path):
    from bigtrain.models import load_model
    inp = Input(shape=(4,))
    model = Model(inputs=inp, outputs=bl.Dense(3, kernel_initializer=bi.RandomNormal(
        stddev=0.02), bias_initializer="ones")(inp))
    model.save(tmp_path / "m.bigtrain")
    layer = load_model(tmp_path / "m.bigtrain").layers[-1]
    init = layer.weight_options["kernel"].initializer
    assert isinstance(init, bi.RandomNormal) and init.stddev == 0.02
    assert isinstance(layer.weight_options["bias"].initializer, bi.Ones)


def test_unknown_initializer_is_a_value_error():
    with pytest.raises(ValueError, match="unknown initializer"):
        bl.Dense(3, kernel_initializer="he_gaussian")
    with pytest.raises(ValueError, match="kernel_initializer.*depthwise"):
        bl.DepthwiseConv2D(3, kernel_initializer="he_normal")
