"""A metric with one value per class or threshold (F1Score(average=None),
Precision(thresholds=[...])) logs a list: fit with run_dir= or checkpoint_dir= crashed on it
(`float()` of a list in the run record and in the checkpoint's history)."""
import json

import numpy as np
import torch

import bigtrain.metrics as bm
from bigtrain.layers import Dense, Input
from bigtrain.models import Model


def _model():
    torch.manual_seed(0)
    inp = Input(shape=(4,))
    model = Model(inp, Dense(3, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="categorical_crossentropy",
                  metrics=["accuracy", bm.F1Score()])
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype("float32")
    return x, np.eye(3, dtype="float32")[rng.integers(0, 3, 40)]


def test_run_dir_and_checkpoints_take_a_metric_with_a_value_per_class(tmp_path):
    x, y = _data()
    history = _model().fit(x, y, epochs=2, batch_size=8, verbose=0, run_dir=str(tmp_path / "run"),
                           checkpoint_dir=str(tmp_path / "ckpt"))
    assert len(history.history["f1_score"][-1]) == 3  # one F1 per class, as Keras
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(record["history"]["accuracy"]) == 2  # the scalars are kept
    # the checkpoint keeps the per-class values, and a resumed fit adds to them
    resumed = _model().fit(x, y, epochs=3, batch_size=8, verbose=0,
                           checkpoint_dir=str(tmp_path / "ckpt"), resume="auto")
    assert resumed.epoch == [2] and len(resumed.history["f1_score"][0]) == 3
    metas = [json.loads(p.read_text()) for p in (tmp_path / "ckpt").rglob("meta.json")]
    kept = max((m["history"]["history"]["f1_score"] for m in metas), key=len)
    assert kept[:2] == history.history["f1_score"] and len(kept) == 3
