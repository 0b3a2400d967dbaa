import numpy as np
import pytest
import torch

from bigtrain.layers import (Activation, Add, BatchNormalization, Concatenate, Dense, Dropout,
                             Embedding, Flatten, Input, LayerNormalization, Reshape)
from bigtrain.models import Model, Sequential, load_model
from tests.api.harness import run_layer_test


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid", "softmax", "linear",
                                        torch.sin])
def test_dense_activations(activation):
    run_layer_test(lambda: Dense(7, activation=activation), (5,), (7,), expected_params=42)


def test_dense_on_sequences_acts_on_last_axis():
    run_layer_test(lambda: Dense(4), (3, 6), (3, 4), expected_params=28)


@pytest.mark.parametrize("factory,in_shape,out_shape,params,dtype", [
    (lambda: Dropout(0.5), (6,), (6,), 0, "float32"),
    (lambda: Activation("tanh"), (6,), (6,), 0, "float32"),
    (lambda: Flatten(), (2, 3, 4), (24,), 0, "float32"),
    (lambda: Reshape((4, -1)), (2, 6), (4, 3), 0, "float32"),
    (lambda: Embedding(10, 4), (5,), (5, 4), 40, "int64"),
    (lambda: LayerNormalization(), (3, 8), (3, 8), 16, "float32"),
    (lambda: BatchNormalization(), (8,), (8,), 16, "float32"),
])
def test_core_layers(factory, in_shape, out_shape, params, dtype):
    run_layer_test(factory, in_shape, out_shape, expected_params=params, input_dtype=dtype)


def test_merge_layers_and_multi_io_model():
    a, b = Input(shape=(4,), name="a"), Input(shape=(6,), name="b")
    merged = Concatenate()([Dense(5)(a), Dense(5)(b)])
    summed = Add()([Dense(3)(merged), Dense(3)(merged)])
    out2 = Dense(1, activation="sigmoid", name="click")(merged)
    model = Model(inputs=[a, b], outputs=[summed, out2])
    y1, y2 = model(torch.randn(2, 4), torch.randn(2, 6))
    assert y1.shape == (2, 3) and y2.shape == (2, 1)


def test_shape_mismatch_names_both_layers():
    h = Dense(8, name="first")(Input(shape=(4,)))
    second = Dense(2, name="second")
    second(Input(shape=(5,)))  # built for 5 features
    with pytest.raises(ValueError, match=r"'first' with output shape \(None, 8\).*'second'.*\(None, 5\)"):
        second(h)
    with pytest.raises(ValueError, match=r"Add.*one shape"):
        Add()([h, Dense(3)(h)])


def test_keras_weight_layout_and_roundtrip():
    inp = Input(shape=(3,))
    out = BatchNormalization()(Dense(2)(inp))
    model = Model(inputs=inp, outputs=out)
    w = model.get_weights()
    assert [a.shape for a in w] == [(3, 2), (2,), (2,), (2,), (2,), (2,)]
    dense = model.layers[1]  # after the InputLayer, as in Keras
    np.testing.assert_array_equal(w[0], dense.linear.weight.detach().T.numpy())
    new = [np.full_like(a, i + 1.0) for i, a in enumerate(w)]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="expects shape"):
        model.set_weights([np.zeros((2, 3))] + new[1:])


def test_sequential_builds_and_saves(tmp_path):
    model = Sequential([Input(shape=(6,)), Dense(4, activation="relu"), Dropout(0.1),
                        Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).normal(size=(10, 6)).astype("float32")
    before = model.predict(x)
    np.testing.assert_allclose(before.sum(1), 1.0, rtol=1e-5)
    path = tmp_path / "m.bigtrain"
    model.save(str(path))
    loaded = load_model(str(path))
    np.testing.assert_array_equal(loaded.predict(x), before)
    assert loaded.compiled is not None


def test_sequential_with_input_shape_kwarg():
    model = Sequential([Dense(4, input_shape=(6,)), Dense(2)])
    assert model.count_params() == 6 * 4 + 4 + 4 * 2 + 2


def test_transformer_layers_build_a_gpt_functionally(tmp_path):
    from bigtrain.layers import PositionalEmbedding, TransformerBlock
    ids = Input(shape=(8,), dtype="int64")
    h = PositionalEmbedding(sequence_length=8, vocab_size=32, embed_dim=16)(ids)
    h = TransformerBlock(num_heads=4)(TransformerBlock(num_heads=4)(h))
    model = Model(ids, Dense(32)(LayerNormalization()(h)))
    x = torch.randint(0, 32, (2, 8))
    y = model(x)
    assert y.shape == (2, 8, 32)
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 32  # causal: changing the last token leaves earlier outputs
    torch.testing.assert_close(model(x2)[:, :-1], y[:, :-1])
    path = tmp_path / "gpt.bigtrain"
    model.save(str(path))
    np.testing.assert_array_equal(load_model(str(path)).predict(x.numpy()), model.predict(x.numpy()))
    run_layer_test(lambda: TransformerBlock(num_heads=2), (5, 8), (5, 8))


def test_load_weights_matches_by_order_when_auto_names_differ(tmp_path):
    def build():
        inp = Input(shape=(3,))
        return Model(inp, Dense(2)(Dense(4)(inp)))
    first = build()
    first.save_weights(str(tmp_path / "w.safetensors"))
    second = build()  # dense_2, dense_3 now
    assert [k for k in second.net.state_dict()] != [k for k in first.net.state_dict()]
    second.load_weights(str(tmp_path / "w.safetensors"))
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    inp = Input(shape=(3,))
    with pytest.raises(ValueError, match="do not fit this model"):
        Model(inp, Dense(5)(inp)).load_weights(str(tmp_path / "w.safetensors"))


def test_chain_models_run_as_a_plain_loop_with_the_same_result():
    inp = Input(shape=(6,))
    chain = Model(inp, Dense(3)(Dropout(0.0)(Dense(5, activation="relu")(inp))))
    a, b = Input(shape=(6,)), Input(shape=(6,))
    branched = Model([a, b], Dense(2)(Add()([Dense(4)(a), Dense(4)(b)])))
    assert chain.net._chain_layers == [n.layer for n in chain.net.nodes]
    assert branched.net._chain_layers is None
    x = torch.randn(7, 6)
    fast = chain(x)
    chain.net._chain_layers = None  # the general walk over graph nodes
    torch.testing.assert_close(fast, chain(x), rtol=0, atol=0)


def test_dropout_noise_shape_shares_the_mask_along_broadcast_axes(tmp_path):
    """Keras's noise_shape: (None, 1, 6) drops the same features at every time step."""
    torch.manual_seed(0)
    inp = Input(shape=(5, 6))
    model = Model(inp, Dropout(0.5, noise_shape=(None, 1, 6))(inp))
    x = torch.ones(8, 5, 6)
    model.net.train()
    out = model.net(x)
    assert torch.equal(out, out[:, :1].expand_as(out))  # one mask per sample and feature
    assert set(out.unique().tolist()) == {0.0, 2.0}
    model.net.eval()
    assert torch.equal(model.net(x), x)
    path = tmp_path / "m"
    model.save(str(path))
    loaded = [la for la in load_model(str(path)).layers if isinstance(la, Dropout)]
    assert [la.noise_shape for la in loaded] == [(None, 1, 6)]
    with pytest.raises(ValueError, match="noise_shape"):
        Model(inp, Dropout(0.5, noise_shape=(None, 3, 6))(inp))
