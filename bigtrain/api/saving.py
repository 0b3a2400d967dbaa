"""`load_model`: rebuild a Model from a file written by `Model.save` (bigtrain.api.files
writes and reads the safetensors; nothing here can execute code from a file).

Example:
    model = bigtrain.models.load_model("model.bigtrain")
"""
from __future__ import annotations

import json

from bigtrain.api.files import FORMAT, load_weights, read, save_model, save_weights  # noqa: F401
from bigtrain.api.functional import graph_from_config
from bigtrain.api.model import Model


def load_model(path: str, compile: bool = True):
    """Rebuild a model saved with `Model.save` (architecture, weights, compile settings).

    Example:
        model = bigtrain.models.load_model("model.bigtrain")
    """
    meta, tensors = read(path)
    if meta.get("kind") != "model":
        raise ValueError(f"{path} holds weights only; build the model in code and call "
                         "model.load_weights(path)")
    arch = json.loads(meta["architecture"])
    graph = graph_from_config(arch["graph"])
    model = Model(graph.input_tensors, graph.output_tensors, name=arch.get("name"))
    model.net.load_state_dict(tensors)
    c = arch.get("compile")
    if compile and c and all(c["losses"]) and c["optimizer"]:
        model.compile(optimizer=c["optimizer"], loss=c["losses"], metrics=c["metrics"][0],
                      loss_weights=c["loss_weights"], learning_rate=c["lr"])
    return model
