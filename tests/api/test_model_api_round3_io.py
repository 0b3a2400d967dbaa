"""Model-API parity with Keras 3 on torch, the files and the data sources around fit:
save/save_weights/load_weights take Keras's arguments (overwrite, skip_mismatch) or refuse
them clearly, Keras's own files are named as such, and evaluate/predict read a PyDataset
and a DataLoader of inputs alone as Keras does."""
import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bigtrain
import bigtrain.layers as B
from bigtrain.models import Sequential, load_model

RNG = np.random.default_rng(4)
X = RNG.standard_normal((40, 4)).astype("float32")
Y = RNG.standard_normal((40, 2)).astype("float32")


def pair():
    import keras
    bigtrain.clear_session()
    kmodel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
                               keras.layers.Dense(2, name="o")])
    model = Sequential([B.Input((4,)), B.Dense(3, name="h"), B.Dense(2, name="o")])
    model.set_weights(kmodel.get_weights())
    for m in (kmodel, model):
        m.compile("sgd", "mse", metrics=["mae"])
    return kmodel, model


def test_save_takes_kerass_arguments_and_refuses_what_it_cannot_write(tmp_path):
    _, model = pair()
    path = str(tmp_path / "m.keras")
    model.save(path)
    model.save(path, overwrite=True)
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save(path, overwrite=False)
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save_weights(path, overwrite=False)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        model.save(str(tmp_path))
    with pytest.raises(ValueError, match="zipped=False"):
        model.save(str(tmp_path / "n.keras"), zipped=False)
    with pytest.raises(ValueError, match="max_shard_size"):
        model.save_weights(str(tmp_path / "w.weights.h5"), max_shard_size="1GB")
    with pytest.raises(TypeError, match="save_format"):
        model.save(str(tmp_path / "n.keras"), save_format="tf")
    model.save(str(tmp_path / "z.keras"), zipped=True)
    np.testing.assert_array_equal(load_model(str(tmp_path / "z.keras")).predict(X),
                                  model.predict(X))


def test_kerass_own_files_are_named_as_such(tmp_path):
    kmodel, model = pair()
    kmodel.save(str(tmp_path / "k.keras"))
    kmodel.save_weights(str(tmp_path / "k.weights.h5"))
    with pytest.raises(ValueError, match="Keras .keras archive.*set_weights"):
        load_model(str(tmp_path / "k.keras"))
    with pytest.raises(ValueError, match="HDF5 file.*set_weights"):
        model.load_weights(str(tmp_path / "k.weights.h5"))


def test_load_weights_skip_mismatch_loads_what_fits_as_keras(tmp_path):
    import keras
    kmodel, model = pair()
    model.save_weights(str(tmp_path / "w.bigtrain"))
    kmodel.save_weights(str(tmp_path / "w.weights.h5"))
    bigtrain.clear_session()
    wider = Sequential([B.Input((4,)), B.Dense(3, name="h"), B.Dense(5, name="o")])
    kwider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
                               keras.layers.Dense(5, name="o")])
    before, kbefore = wider.get_weights(), kwider.get_weights()
    with pytest.raises(ValueError, match="do not fit this model"):
        wider.load_weights(str(tmp_path / "w.bigtrain"))
    with pytest.warns(UserWarning, match="left 2 weight"):
        wider.load_weights(str(tmp_path / "w.bigtrain"), skip_mismatch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwider.load_weights(str(tmp_path / "w.weights.h5"), skip_mismatch=True)
    # as Keras: layer h's weights load, layer o's (another shape) stay as they were
    saved = model.get_weights()
    for ours, theirs, old, kold, want in zip(wider.get_weights(), kwider.get_weights(),
                                             before, kbefore, saved[:2] + [None, None]):
        np.testing.assert_array_equal(ours, old if want is None else want)
        np.testing.assert_array_equal(theirs, kold if want is None else want)
    with pytest.raises(TypeError, match="skip_mismatch"):
        wider.load_weights(str(tmp_path / "w.bigtrain"), by_name=True)
    assert os.path.exists(str(tmp_path / "w.bigtrain"))


def _py_dataset():
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return X[i * 10:(i + 1) * 10], Y[i * 10:(i + 1) * 10]
    return Batches()


def test_evaluate_and_predict_read_a_pydataset_as_keras():
    kmodel, model = pair()
    np.testing.assert_allclose(model.predict(_py_dataset()),
                               kmodel.predict(_py_dataset(), verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.evaluate(_py_dataset()),
                               kmodel.evaluate(_py_dataset(), verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.evaluate(_py_dataset(), steps=2),
                               kmodel.evaluate(_py_dataset(), steps=2, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dataset", ["tensor dataset", "tensor"])
def test_predict_reads_a_dataloader_of_inputs_alone_as_keras(dataset):
    kmodel, model = pair()
    source = TensorDataset(torch.tensor(X)) if dataset == "tensor dataset" else torch.tensor(X)
    loader = DataLoader(source, batch_size=16)
    np.testing.assert_allclose(model.predict(loader), kmodel.predict(loader, verbose=0),
                               rtol=1e-5, atol=1e-6)
