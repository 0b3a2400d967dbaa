"""Tally: losses and metrics accumulated over a pass, as the loop feeds them."""
import pytest
import torch

from bigtrain.api.metrics import get_metric
from bigtrain.engine.steps import Tally, _Ring
from bigtrain.parallel.base import StepBatch


def test_tally_metrics_read_probabilities_where_needed_and_ask_once():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    probs = logits.softmax(-1)
    names = ["accuracy", "mse", "top_k_categorical_accuracy"]
    fed, ref = [get_metric(n) for n in names], [get_metric(n) for n in names]
    asked = []
    ask = fed[1].reads_scores_only
    fed[1].reads_scores_only = lambda y, p: asked.append(1) or ask(y, p)
    tally = Tally([fed], [lambda t: t.softmax(-1)], "cpu")
    for m in ref:
        m.reset("cpu")
    for i in range(0, 40, 16):  # 16, 16, 8 rows: the last batch is smaller
        x, y = logits[i:i + 16], ids[i:i + 16].reshape(-1, 1).int()  # (B, 1) int32 ids
        tally.add(StepBatch([(x, y, None)], [1.0]), [x], torch.tensor(float(i)))
        for m in ref:
            m.update(ids[i:i + 16], probs[i:i + 16])
    logs = tally.logs(tally.state())
    assert asked == [1]
    assert logs["loss"] == pytest.approx((0 * 16 + 16 * 16 + 32 * 8) / 40)
    for m in ref:
        assert logs[m.name] == pytest.approx(m.result(), rel=1e-6)


def test_tally_reads_held_steps_as_one_update_with_the_same_sums():
    """On a CPU the built-in metrics read _Ring.STEPS steps at once (one update on the
    stacked copies); the sums equal one update per batch, across the flush boundary and
    the pass's end, and a user's metric still gets one update per step."""
    from bigtrain.api.metrics import Metric

    class PerBatch(Metric):  # not batchable: must see every batch alone
        name = "per_batch"

        def __init__(self):
            self.calls = 0

        def update(self, y_true, y_pred):
            self.calls += 1
            self._add(y_pred.mean(), 1)

    g = torch.Generator().manual_seed(1)
    steps = _Ring.STEPS * 2 + 3
    names = ["accuracy", "mse", "top_k_categorical_accuracy", "auc"]
    fed, ref = [get_metric(n) for n in names], [get_metric(n) for n in names]
    user, reads = PerBatch(), []
    update = fed[0].update
    fed[0].update = lambda y, p: reads.append(len(p)) or update(y, p)
    tally = Tally([fed, [user]], [lambda t: t.softmax(-1), None], "cpu")
    for m in ref:
        m.reset("cpu")
    means = []
    for step in range(steps):
        rows = 8 if step < steps - 1 else 3  # the last batch is smaller
        logits = torch.randn(rows, 6, generator=g)
        ids = torch.randint(0, 6, (rows,), generator=g)
        second = torch.randn(rows, 2, generator=g)
        tally.add(StepBatch([(logits, (ids, second), None)], [1.0]), [(logits, second)],
                  torch.tensor(1.0))
        for m in ref:
            m.update(ids, logits.softmax(-1))
        means.append(float(second.mean()))
    logs = tally.logs(tally.state())
    for m in ref:
        assert logs[m.name] == pytest.approx(m.result(), rel=1e-6), m.name
    assert reads == [8 * _Ring.STEPS] * 2 + [8 * 2, 3]  # four reads, not 35: the smaller
    # last batch does not fit the ring and is read alone
    assert user.calls == steps
    assert logs["per_batch"] == pytest.approx(sum(means) / steps, rel=1e-5)


def test_tally_keeps_no_tensor_of_a_step():
    """A step's outputs, targets and loss are free once the step is over: tensors held
    between steps keep heap memory alive, which made fit fault pages in every step."""
    import weakref

    tally = Tally([[get_metric("accuracy"), get_metric("mse")]], [lambda t: t.softmax(-1)],
                  "cpu")
    refs = []
    for step in range(5):
        out, ids, loss = torch.randn(8, 4), torch.randint(0, 4, (8,)), torch.tensor(0.5)
        tally.add(StepBatch([(out, ids, None)], [1.0]), [out], loss)
        refs += [weakref.ref(out), weakref.ref(ids), weakref.ref(loss)]
        del out, ids, loss
    assert all(r() is None for r in refs)
    logs = tally.logs(tally.state())
    assert logs["loss"] == pytest.approx(0.5)


def test_tally_reads_held_steps_of_another_shape_apart():
    """Steps whose outputs cannot stack (a stream's sequence length changes) are read
    separately, with the same result as one update per step."""
    g = torch.Generator().manual_seed(2)
    fed, ref = get_metric("accuracy"), get_metric("accuracy")
    ref.reset("cpu")
    tally = Tally([[fed]], [None], "cpu")
    for t in (5, 5, 7, 3, 3):  # (B, T, classes) outputs, T varies
        logits = torch.randn(4, t, 6, generator=g)
        ids = torch.randint(0, 6, (4, t), generator=g)
        tally.add(StepBatch([(logits, ids, None)], [1.0]), [logits], torch.tensor(0.0))
        ref.update(ids, logits)
    assert tally.logs(tally.state())["accuracy"] == pytest.approx(ref.result())


def test_a_subclass_of_a_built_in_metric_is_read_every_step_unless_it_says_otherwise():
    from bigtrain.api.metrics import MeanError

    class BatchMeanMAE(MeanError):  # adds one batch mean per update: not additive
        pass

    class Stacked(MeanError):
        batchable = True

    assert get_metric("mae").batchable and not BatchMeanMAE("mae").batchable
    assert Stacked("mae").batchable


def test_a_generator_that_refills_its_buffers_gets_the_metrics_of_each_batch():
    """A stream's batches may share memory with the generator's buffers: the metrics read
    each step before the next batch overwrites it."""
    import numpy as np

    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    from bigtrain.optimizers import SGD

    rng = np.random.default_rng(3)
    xs = rng.standard_normal((40, 8, 5)).astype("float32")
    ys = rng.integers(0, 3, (40, 8))

    def batches(reuse):
        xb, yb = np.empty((8, 5), "float32"), np.empty(8, "int64")
        for x, y in zip(xs, ys):
            if not reuse:
                xb, yb = np.empty((8, 5), "float32"), np.empty(8, "int64")
            xb[:], yb[:] = x, y
            yield xb, yb

    bigtrain.clear_session()
    inp = Input(shape=(5,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer=SGD(learning_rate=0.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    fresh = model.fit(batches(False), epochs=1, verbose=0).history["accuracy"][0]
    reused = model.fit(batches(True), epochs=1, verbose=0).history["accuracy"][0]
    hits = (model.predict(xs.reshape(-1, 5)).argmax(-1) == ys.reshape(-1)).mean()
    assert fresh == pytest.approx(hits) and reused == pytest.approx(hits)
