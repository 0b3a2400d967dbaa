"""Keras's arguments of `Model.save`, `save_weights` and `load_weights` (overwrite,
zipped, max_shard_size, skip_mismatch), taken or refused with the reason, before
`bigtrain.api.files` writes or reads the file; and a plain refusal of Keras's own `.keras`
and HDF5 files, which bigtrain does not read. It never imports the Model class.

Example:
    save_as_keras(model, "model.keras", overwrite=False, include_optimizer=True, kwargs={})
"""
from __future__ import annotations

import os
import warnings

from bigtrain.api.files import load_weights, read, save_model, save_weights, split

def _writable(path, overwrite: bool) -> None:
    """Refuse a folder, and an existing file unless `overwrite` (Keras asks instead)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; bigtrain saves one file: pass a file "
                                "path such as 'model.keras' or 'model.bigtrain'")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False: pass overwrite=True to "
                              "replace it, or another path")


def save_as_keras(model, filepath, overwrite: bool, include_optimizer: bool,
                  kwargs: dict) -> None:
    """`Model.save`: Keras's `zipped` (None or True: bigtrain's one file) and `overwrite`."""
    zipped = kwargs.pop("zipped", None)
    if kwargs:
        raise TypeError(f"Model.save() got unexpected keyword arguments {sorted(kwargs)}; it "
                        "takes filepath, overwrite, include_optimizer and zipped")
    if zipped is False:
        raise ValueError("Model.save(zipped=False) writes Keras's unzipped folder, which "
                         "bigtrain does not: leave zipped out (bigtrain writes one file)")
    _writable(filepath, overwrite)
    save_model(model, os.fspath(filepath), include_optimizer)


def save_weights_as_keras(model, filepath, overwrite: bool, max_shard_size) -> None:
    """`Model.save_weights`: one safetensors file; Keras's sharding is refused."""
    if max_shard_size is not None:
        raise ValueError("save_weights(max_shard_size=...) splits Keras's weights files, which "
                         "bigtrain does not: leave it out (one file of every weight)")
    _writable(filepath, overwrite)
    save_weights(model, os.fspath(filepath))


def refuse_keras_files(path) -> None:
    """A Keras `.keras` archive (a zip) or HDF5 file is not bigtrain's: say so plainly."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(8)
    kind = "a Keras .keras archive (zip)" if _keras_zip(path, head) else \
        "an HDF5 file (Keras's .h5 / .weights.h5)" if head.startswith(b"\x89HDF") else None
    if kind:
        raise ValueError(f"{path} is {kind}, which bigtrain does not read: it reads the "
                         "safetensors files its own Model.save/save_weights write. Build "
                         "the model in bigtrain and copy the weights over: "
                         "model.set_weights(keras_model.get_weights())")


def _keras_zip(path: str, head: bytes) -> bool:
    """A zip holding Keras's archive members (config.json, model.weights.h5); other zips,
    such as torch.save's pickles, are left to the reader's own refusal. Only the zip's
    member names are read, nothing inside them."""
    if not head.startswith(b"PK\x03\x04"):
        return False
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names & {"config.json", "metadata.json", "model.weights.h5"})


def load_weights_as_keras(model, filepath, skip_mismatch: bool, kwargs: dict) -> None:
    """`Model.load_weights`; `skip_mismatch=True` loads the weights whose name and shape
    match and leaves the others (with a warning naming them), as Keras's."""
    if kwargs:
        raise TypeError(f"load_weights() got unexpected keyword arguments {sorted(kwargs)}; "
                        "it takes filepath and skip_mismatch")
    refuse_keras_files(filepath)
    if not skip_mismatch:
        load_weights(model, os.fspath(filepath))
        return
    meta, tensors = read(os.fspath(filepath))
    tensors = split(meta, tensors)[0]
    own = model.net.state_dict()
    fits = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(fits))
    if skipped:
        warnings.warn(f"load_weights(skip_mismatch=True) left {len(skipped)} weight(s) as they "
                      f"were, missing in {filepath} or of another shape there: "
                      f"{skipped[:5]}", UserWarning, stacklevel=3)
    model.net.load_state_dict(fits, strict=False)
