"""A functional model's layer order (model.layers, get_layer(index=), get_weights) is Keras
3's: by depth from the outputs, not the order a depth-first walk runs the layers. Held to
Keras on branched, multi-input, multi-output, shared-layer and nested-model graphs, and
kept through save/load and to_json."""
import numpy as np
import pytest

import bigtrain
import bigtrain.layers as B
from bigtrain.models import Model, load_model, model_from_json


def two_branches(L, M):
    """Branches of different depths meeting in Add: Keras lists b1 before a1."""
    a_in, b_in = L.Input(shape=(4,), name="a_in"), L.Input(shape=(4,), name="b_in")
    a = L.Dense(4, name="a2")(L.Dense(4, name="a1")(a_in))
    b = L.Dense(4, name="b3")(L.Dense(4, name="b2")(L.Dense(4, name="b1")(b_in)))
    return M([a_in, b_in], L.Dense(2, name="out")(L.Add(name="add")([a, b])))


def multi_output(L, M):
    a, b = L.Input((4,), name="a"), L.Input((4,), name="b")
    c = L.Input((4,), name="c")
    x = L.Dense(3, name="x1")(a)
    y = L.Dense(3, name="y1")(L.Dense(3, name="y0")(b))
    o1 = L.Dense(2, name="o1")(L.Concatenate(name="cat")([x, y, c]))
    o2 = L.Dense(1, name="o2")(L.Dense(2, name="h2")(y))
    return M([a, b, c], [o2, o1])


def shared(L, M):
    """One Dense called at three depths: Keras places it at its deepest."""
    a, b = L.Input((4,), name="a"), L.Input((4,), name="b")
    s = L.Dense(4, name="s")
    p = s(a)
    q = s(L.Dense(4, name="t")(b))
    r = s(L.Dense(4, name="u")(p))
    return M([a, b], L.Dense(1, name="o")(L.Add(name="add")([p, q, r])))


def nested(L, M):
    """A model called as a layer beside a parallel Dense: Keras lists it as one layer."""
    i = L.Input((4,), name="bi")
    base = M(i, L.Dense(3, name="b3")(L.Dense(3, name="b2")(L.Dense(3, name="b1")(i))),
             name="base")
    x = L.Input((4,), name="x")
    d = L.Dense(3, name="d")(x)
    return M(x, L.Dense(2, name="o")(L.Concatenate(name="c")([d, base(x)])))


def nested_twice(L, M):
    """A two-input model called twice (siamese), and a model inside a model."""
    i, j = L.Input((4,), name="bi"), L.Input((4,), name="bj")
    pair = M([i, j], L.Dense(3, name="p2")(L.Add(name="padd")(
        [L.Dense(3, name="p1")(i), L.Dense(3, name="pj")(j)])), name="pair")
    k = L.Input((4,), name="ki")
    inner = M(k, L.Dense(4, name="n1")(k), name="inner")
    m = L.Input((4,), name="mi")
    mid = M(m, L.Dense(3, name="m2")(L.Concatenate(name="mc")(
        [inner(m), L.Dense(4, name="m1")(m)])), name="mid")
    x, y = L.Input((4,), name="x"), L.Input((4,), name="y")
    e = L.Dense(4, name="e")(y)
    parts = [pair([e, x]), pair([x, e]), mid(x), L.Dense(3, name="dx")(x)]
    return M([x, y], L.Dense(1, name="o")(L.Concatenate(name="c")(parts)))


GRAPHS = [two_branches, multi_output, shared, nested, nested_twice]


def _pair(build):
    import keras
    keras.utils.set_random_seed(0)
    bigtrain.clear_session()
    return build(keras.layers, keras.Model), build(B, Model)


def _inputs(km):
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(3, 4)).astype("float32") for _ in km.inputs]
    return xs if len(xs) > 1 else xs[0]


def _listed(out):
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]


def _assert_predicts_as_keras(model, km, x):
    for got, want in zip(_listed(model.predict(x)), _listed(km.predict(x, verbose=0))):
        np.testing.assert_allclose(got, want, atol=1e-5)


def _owner(path: str) -> list[str]:
    """"layer/weight" of a weight's path (Keras puts a Sequential's name in front)."""
    return path.split("/")[-2:]


def _assert_order_as_keras(model, km):
    import keras
    assert [layer.name for layer in model.layers] == [layer.name for layer in km.layers]
    assert [model.get_layer(index=i).name for i in range(len(km.layers))] == \
        [layer.name for layer in km.layers]
    assert [_owner(w.path) for w in model.weights] == [_owner(w.path) for w in km.weights]


@pytest.mark.parametrize("build", GRAPHS, ids=lambda f: f.__name__)
def test_layer_and_weight_order_is_keras(build):
    km, model = _pair(build)
    _assert_order_as_keras(model, km)
    model.set_weights(km.get_weights())  # every weight has the same shape: order is all
    _assert_predicts_as_keras(model, km, _inputs(km))
    for ours, theirs in zip(model.get_weights(), km.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("build", [two_branches, nested, nested_twice],
                         ids=lambda f: f.__name__)
def test_saved_and_json_models_keep_keras_order(build, tmp_path):
    km, model = _pair(build)
    model.set_weights(km.get_weights())
    model.save(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    clone = model_from_json(model.to_json())
    clone.set_weights(km.get_weights())
    for other in (loaded, clone):
        _assert_order_as_keras(other, km)
        _assert_predicts_as_keras(other, km, _inputs(km))


def test_weights_files_still_load_by_position_under_other_names(tmp_path):
    """load_weights matches a file's weights by position when the automatic names differ
    (dense_4 here, dense there): that position is the run order files always had."""
    def build():
        a, b = B.Input((4,)), B.Input((4,))
        x = B.Dense(4)(B.Dense(4)(a))
        y = B.Dense(4)(B.Dense(4)(B.Dense(4)(b)))
        return Model([a, b], B.Dense(2)(B.Add()([x, y])))
    bigtrain.clear_session()
    first = build()
    first.save_weights(str(tmp_path / "w.bigtrain"))
    second = build()  # dense_6 ... dense_11
    assert {layer.name for layer in first.layers}.isdisjoint(
        {layer.name for layer in second.layers} - {"add", "add_1"})
    second.load_weights(str(tmp_path / "w.bigtrain"))
    x = [np.random.default_rng(0).normal(size=(3, 4)).astype("float32") for _ in range(2)]
    np.testing.assert_array_equal(second.predict(x), first.predict(x))


def test_a_model_inside_a_sequential_round_trips_as_keras(tmp_path):
    import keras
    from bigtrain.models import Sequential
    keras.utils.set_random_seed(0)
    bigtrain.clear_session()
    models = []
    for L, M, S in ((keras.layers, keras.Model, keras.Sequential), (B, Model, Sequential)):
        i = L.Input((4,), name="bi")
        base = M(i, L.Dense(3, name="b2")(L.Dense(3, name="b1")(i)), name="base")
        models.append(S([L.Input((4,)), base, L.Dense(2, name="o")], name="stack"))
    km, model = models
    clone = model_from_json(model.to_json())
    clone.set_weights(km.get_weights())
    _assert_order_as_keras(clone, km)
    _assert_predicts_as_keras(clone, km, _inputs(km))
