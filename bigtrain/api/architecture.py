"""A model's architecture without its weights, as Keras's `get_config` / `from_config` /
`to_json`: a Sequential's layers in order (and its Input), a functional model's graph;
and the shapes a model's graph is built from: Model's dict of inputs (`graph_inputs`), a
Sequential's `build` shape and the first data an unbuilt Sequential meets
(`build_on_data`).

The model classes come in as arguments (this module is imported by bigtrain.api.model).

Example:
    config = model_config(model)
    clone = model_from_config(config, None, Model, Sequential)
"""
from __future__ import annotations

import json

from bigtrain.api.functional import (GraphModule, _config, graph_config, graph_from_config,
                                     graph_outputs, layer_classes)
from bigtrain.api.layers.base import KerasTensor

#: how a config names a model used as a layer (its `keras_kind`)
MODEL_KINDS = ("Functional", "Sequential")


def model_config(model) -> dict:
    """The architecture of a functional or Sequential model as a JSON-able dict: a
    Sequential's layers in order (and its Input), a functional model's graph."""
    base = {"name": model.name, "trainable": model.trainable}
    if model.keras_kind == "Sequential":
        plain = [layer for layer in model.layers if not hasattr(layer, "get_config")]
        if plain:
            raise ValueError(f"get_config needs Keras-style layers; {type(plain[0]).__name__} "
                             "is a plain torch module: give it get_config(), or save the "
                             "weights only (save_weights) and rebuild the model in code")
        inp = model._input.node.layer.get_config() if model._input is not None else None
        return {**base, "input": inp, "layers": [
            {"class_name": _kind(layer), "config": _config(layer)} for layer in model.layers]}
    if not isinstance(model.net, GraphModule):
        raise ValueError("get_config describes functional and Sequential models; a wrapped "
                         "torch module has no architecture bigtrain can write: rebuild it in "
                         "code and move the weights with get_weights/set_weights")
    return {**base, "graph": graph_config(model.net)}


def _kind(layer) -> str:
    """A layer's class name, or a model's Keras kind ("Functional", "Sequential") for a
    model used as a layer of the stack."""
    return getattr(type(layer), "keras_kind", None) or type(layer).__name__


def model_from_config(config: dict, custom_objects, functional, sequential):
    """A new model, with fresh weights, from `model_config`'s dict, built as the class
    `functional` (a graph) or `sequential` (a stack of layers)."""
    trainable = config.get("trainable", True)
    if "layers" in config:  # a Sequential
        from bigtrain.api.layers import Input
        classes = layer_classes(custom_objects)
        inp = config.get("input")
        first = [Input(tuple(inp["shape"]), dtype=inp["dtype"], name=inp["name"])] if inp else []
        build = nested_builder(custom_objects, functional, sequential)
        layers = [build(entry["config"]) if entry["class_name"] in MODEL_KINDS
                  else classes(entry["class_name"])(**entry["config"])
                  for entry in config["layers"]]
        return sequential(first + layers, name=config.get("name"), trainable=trainable)
    if "graph" not in config:
        raise ValueError("not a model config: expected the dict of Model.get_config() (with "
                         f"'layers' or 'graph'), got keys {sorted(config)}")
    graph = graph_from_config(config["graph"], custom_objects, nested_builder(
        custom_objects, functional, sequential))
    return functional(graph.input_tensors, graph_outputs(graph), name=config.get("name"),
                      trainable=trainable)


def nested_builder(custom_objects, functional, sequential):
    """`build(config) -> model` for the models a graph calls as layers (graph_from_config)."""
    def build(config: dict):
        return model_from_config(config, custom_objects, functional, sequential)
    return build


def model_json(model, **kwargs) -> str:
    return json.dumps({"class_name": model.keras_kind, "config": model_config(model)},
                      **kwargs)


def sample_shape(input_shape) -> tuple:
    """`Sequential.build`'s argument as the shape of one sample: Keras's batch shape
    `(None, 4)` loses its batch axis; a shape without a leading None is a sample's."""
    shape = tuple(input_shape)
    return shape[1:] if len(shape) >= 2 and shape[0] is None else shape


def build_on_data(model, x) -> None:
    """Build a Sequential given no input shape from the first data it meets, as Keras's
    first fit/evaluate/predict or call builds it, and run the compile that waited for it
    (`model.pending_compile`: the call `training.compile_model` kept before the build)."""
    import numpy as np
    import torch
    from bigtrain.api.layers import Input
    if model.net is not None or not model.layers:
        return
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise ValueError(f"the Sequential has no input shape yet and cannot read one from "
                         f"{type(x).__name__}: start it with Input(shape=...), give the first "
                         "layer input_shape=..., or call model.build((None, *sample_shape))")
    integer = not (x.is_floating_point() if isinstance(x, torch.Tensor) else
                   np.issubdtype(x.dtype, np.floating))  # token ids stay integers
    model._input = Input(tuple(x.shape[1:]), dtype="int64" if integer else None)
    model.build()
    pending, model.pending_compile = model.pending_compile, None
    if pending is not None:  # compile's call, kept by training.compile_model
        pending()


def graph_inputs(inputs) -> list:
    """Model's `inputs` as a list: a dict `{name: Input(name=name)}` in Keras's order (by
    key), each key naming its Input, as the dict of arrays fit and predict take is read."""
    if not isinstance(inputs, dict):
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    for key, t in inputs.items():
        name = t.node.layer.name if isinstance(t, KerasTensor) else None
        if name is not None and name != key:
            raise ValueError(f"Model(inputs={{...}}) maps {key!r} to the Input named {name!r}; "
                             "bigtrain reads a dict of arrays by the Inputs' names: key each "
                             f"Input by its name, or create it as Input(..., name={key!r})")
    return [inputs[key] for key in sorted(inputs)]


def build_inner_layers(model, sample) -> None:
    """Build the bigtrain layers inside a wrapped torch module that are not built yet, by
    one forward of `sample()` (a few rows of the inputs as a step gets them, or None for a
    stream; called only when a layer needs it) without gradients and in inference mode, so
    that the optimizer fit makes next holds their weights. Keras builds a model before its
    optimizer; a layer built at its first call inside the first step was left out of that
    optimizer and did not train."""
    import torch
    from bigtrain.api.layers.base import Layer
    from bigtrain.parallel.microbatch import call_module
    net = model.net
    if net is None or isinstance(net, GraphModule):
        return
    unbuilt = [m for m in net.modules() if isinstance(m, Layer) and not m.built]
    if not unbuilt:
        return
    sample = sample()
    if sample is None:
        raise ValueError(f"{type(net).__name__} holds bigtrain layers that are not built yet "
                         f"({unbuilt[0].name!r} ...), and fit reads this data as a stream: "
                         "build them first by calling the model once on a sample batch, "
                         "e.g. model(x[:2]), or give the layers their input shapes")
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            call_module(net, sample)
    finally:
        net.train(was)
