"""Conv1D/3DTranspose, SeparableConv1D, DepthwiseConv1D and the 3D pooling, padding,
cropping and upsampling layers held to Keras 3's numbers: predict and one SGD step, 1e-5."""
import pytest

from tests.api.harness import keras_parity


@pytest.mark.parametrize("build,shape", [
    (lambda L: L.Conv1DTranspose(3, 3), (5, 2)),
    (lambda L: L.Conv1DTranspose(3, 4, strides=2, padding="same", activation="tanh"), (5, 2)),
    (lambda L: L.Conv1DTranspose(2, 3, strides=3, output_padding=1, use_bias=False), (4, 2)),
    (lambda L: L.Conv1DTranspose(2, 3, dilation_rate=2, padding="same"), (5, 2)),
    (lambda L: L.Conv1DTranspose(3, 3, strides=2, data_format="channels_first"), (2, 5)),
    (lambda L: L.Conv3DTranspose(2, 2, strides=2), (2, 3, 2, 2)),
    (lambda L: L.Conv3DTranspose(2, 3, strides=(2, 1, 2), padding="same"), (2, 3, 2, 2)),
    (lambda L: L.Conv3DTranspose(2, 2, data_format="channels_first"), (2, 2, 3, 2)),
    (lambda L: L.DepthwiseConv1D(3, depth_multiplier=2), (7, 3)),
    (lambda L: L.DepthwiseConv1D(3, strides=2, padding="same", use_bias=False), (8, 2)),
    (lambda L: L.DepthwiseConv1D(2, dilation_rate=2, data_format="channels_first"), (2, 7)),
    (lambda L: L.SeparableConv1D(4, 3, depth_multiplier=2, activation="relu"), (7, 3)),
    (lambda L: L.SeparableConv1D(3, 3, strides=2, padding="same"), (9, 2)),
    (lambda L: L.SeparableConv1D(3, 2, data_format="channels_first", use_bias=False), (2, 6)),
    (lambda L: [L.Conv3D(3, 2), L.GlobalAveragePooling3D(), L.Dense(2)], (3, 4, 3, 2)),
    (lambda L: [L.Conv3D(3, 2), L.GlobalMaxPooling3D(keepdims=True), L.Dense(2)],
     (3, 4, 3, 2)),
    (lambda L: [L.GlobalAveragePooling3D(data_format="channels_first"), L.Dense(2)],
     (2, 3, 4, 3)),
    (lambda L: [L.ZeroPadding3D(1), L.Conv3D(2, 2)], (2, 3, 2, 2)),
    (lambda L: [L.ZeroPadding3D(((1, 0), (0, 2), (1, 1))), L.Conv3D(2, 2)], (2, 3, 2, 2)),
    (lambda L: [L.ZeroPadding3D((1, 0, 2), data_format="channels_first"),
                L.Conv3D(2, 2, data_format="channels_first")], (2, 2, 3, 2)),
    (lambda L: [L.Cropping3D(1), L.Conv3D(2, 2)], (4, 5, 4, 2)),
    (lambda L: [L.Cropping3D(((1, 0), (0, 2), (1, 1)), data_format="channels_first"),
                L.Conv3D(2, 1, data_format="channels_first")], (2, 4, 5, 4)),
    (lambda L: [L.UpSampling3D((2, 1, 3)), L.Conv3D(2, 2)], (2, 3, 2, 2)),
    (lambda L: [L.UpSampling3D(2, data_format="channels_first"),
                L.Conv3D(2, 2, data_format="channels_first")], (2, 2, 3, 2)),
    (lambda L: [L.AveragePooling3D(2, padding="same"), L.MaxPooling3D(2), L.Flatten(),
                L.Dense(2)], (5, 4, 5, 2)),
])
def test_new_layers_match_keras(build, shape):
    keras_parity(build, shape)


def test_new_layers_survive_save_and_load(tmp_path):
    import numpy as np

    import bigtrain.layers as B
    from bigtrain.models import Model, load_model
    seq = B.Input(shape=(None, 3))  # an axis of any size survives too
    h = B.Conv1DTranspose(4, 3, strides=2, padding="same", output_padding=1)(seq)
    h = B.SeparableConv1D(4, 3, depth_multiplier=2)(B.DepthwiseConv1D(2, use_bias=False)(h))
    vol = B.Input(shape=(2, 3, 2, 2))
    v = B.Conv3DTranspose(2, 2, strides=(1, 2, 1))(B.ZeroPadding3D(((1, 0), (0, 1), (1, 1)))(vol))
    v = B.UpSampling3D((1, 2, 1))(B.Cropping3D(((0, 1), (1, 0), (0, 0)))(v))
    out = B.Concatenate()([B.GlobalMaxPooling1D()(h), B.GlobalAveragePooling3D()(v),
                           B.GlobalMaxPooling3D()(v)])
    model = Model([seq, vol], out)
    model.save(str(tmp_path / "m.bigtrain"))
    again = load_model(str(tmp_path / "m.bigtrain"))
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 7, 3)).astype("float32"),
          rng.normal(size=(2, 2, 3, 2, 2)).astype("float32")]
    np.testing.assert_allclose(again.predict(xs), model.predict(xs), rtol=1e-6)
    assert [type(layer).__name__ for layer in again.layers] == \
        [type(layer).__name__ for layer in model.layers]
