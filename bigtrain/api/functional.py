"""Turns a graph of Keras-style layer calls into one plain `nn.Module`.

`GraphModule(inputs, outputs)` walks back from the outputs, orders the layer calls
topologically and runs them in that order. Its layers are registered under their names
(`layers.dense.linear.weight`), so the module is an ordinary torch module that every
strategy can wrap. A model called as a layer (`base(x, training=False)`) adds its layers'
calls to the graph, marked as one `NestedCall`. Keras's order of the layers (that of
`model.layers` and `get_weights`) is `keras_order`'s.
"""
from __future__ import annotations

import torch
from torch import nn

from bigtrain.api.layers.base import (KerasTensor, Layer, Node, _fmt, hook_free, runs_direct,
                                      train_mode)
from bigtrain.api.layers.layer_losses import CALLS, run_call
from bigtrain.api.regularizers import ADDED
from bigtrain.api.layers.input_layer import InputLayer


class NestedCall:
    """One call of a model inside another model's graph.

    bigtrain runs the called model's layers as nodes of the outer graph (one module holds
    every weight); each such node points here. Keras lists the model as one layer, with its
    weights in its own order, at its place in the outer model.

    Args:
        layer: the called model: an `nn.Module` with `name`, `keras_kind` and
            `get_config()` (a bigtrain Model).
        graph: its GraphModule.
        inputs: the tensors it was called on; `outputs` are the ones it gave.
        training: the `training=` it was called with (None: the outer model's mode).
    """

    def __init__(self, layer: nn.Module, graph: "GraphModule", inputs: list[KerasTensor],
                 training: bool | None):
        self.layer, self.graph, self.inputs, self.training = layer, graph, inputs, training
        self.outputs: list[KerasTensor] = []


def _unit_of(t: KerasTensor):
    """What made `t` as Keras sees it: a layer's node, or the model call it belongs to."""
    return t.node.nested or t.node


def _build_map(outputs: list[KerasTensor]) -> tuple[list, dict[int, int]]:
    """Keras's `_build_map` on units (nodes and model calls): the units from the inputs to
    `outputs` in depth-first post-order, and each layer's first-visit index (pre-order)."""
    order, seen, first = [], set(), {}

    def visit(unit):
        if id(unit) in seen:
            return
        seen.add(id(unit))
        first.setdefault(id(unit.layer), len(first))
        for t in unit.inputs:
            visit(_unit_of(t))
        order.append(unit)

    for t in outputs:
        visit(_unit_of(t))
    return order, first


def keras_order(inputs: list[KerasTensor], outputs: list[KerasTensor]) -> list:
    """The graph's layers (InputLayers and called models included) in Keras 3's order
    (`keras.src.ops.function.map_graph`): by depth, the number of calls between a layer and
    the outputs, deepest first; a layer called at several depths counts at its deepest;
    ties in the order a depth-first walk from the outputs first meets them. An input no
    output depends on sits at depth 0, ahead of the output layers, as in Keras."""
    units, first = _build_map(outputs)
    unit_depth, layer_depth, layers = {}, {}, {}
    for unit in reversed(units):  # outputs first: parents sit one deeper than children
        depth = max(unit_depth.get(id(unit), 0), layer_depth.get(id(unit.layer), 0))
        layer_depth[id(unit.layer)] = depth
        layers[id(unit.layer)] = unit.layer
        for t in unit.inputs:
            parent = id(_unit_of(t))
            unit_depth[parent] = max(depth + 1, unit_depth.get(parent, 0))
    for t in inputs:
        if id(t.node.layer) not in layer_depth:  # an input no output uses
            layer_depth[id(t.node.layer)], first[id(t.node.layer)] = 0, -1
            layers[id(t.node.layer)] = t.node.layer
    return sorted(layers.values(), key=lambda m: (-layer_depth[id(m)], first[id(m)]))


def _topological_nodes(outputs: list[KerasTensor]) -> list[Node]:
    order, seen = [], set()

    def visit(node: Node):
        if id(node) in seen:
            return
        seen.add(id(node))
        for t in node.inputs:
            visit(t.node)
        order.append(node)

    for t in outputs:
        visit(t.node)
    return order


class GraphModule(nn.Module):
    """The functional graph from `inputs` to `outputs` as one module.

    Args:
        inputs: the `Input` tensor(s) the model takes, in call order.
        outputs: the tensor(s) it returns.
    """

    _chain_layers: list | None = None  # the layers in order when the graph is one chain

    def __init__(self, inputs: list[KerasTensor], outputs: list[KerasTensor],
                 output_keys: list[str] | None = None):
        super().__init__()
        self.input_tensors, self.output_tensors = list(inputs), list(outputs)
        #: the keys of Model(inputs, {key: tensor}), in order; None for a list of outputs.
        #: forward still returns a tuple (what the engine's steps read); `keyed` makes
        #: the dict that model(x) and predict return
        self.output_keys = list(output_keys) if output_keys is not None else None
        nodes = _topological_nodes(self.output_tensors)
        given = {id(t.node) for t in self.input_tensors}
        for node in nodes:
            if isinstance(node.layer, InputLayer) and id(node) not in given:
                raise ValueError(f"the outputs depend on input {node.layer.name!r}, which is not "
                                 "in Model(inputs=...); add it to the inputs")
        self.nodes = [n for n in nodes if not isinstance(n.layer, InputLayer)]
        #: the layers in Keras's order: InputLayers, layers and called models (keras_order)
        self.keras_layers = keras_order(self.input_tensors, self.output_tensors)
        self.layers = nn.ModuleDict()  # in the order the layers run (older files' order)
        for node in self.nodes:  # a shared layer is registered once
            if node.layer.name in self.layers and self.layers[node.layer.name] is not node.layer:
                raise ValueError(f"two different layers are named {node.layer.name!r}; "
                                 "give them unique names")
            self.layers[node.layer.name] = node.layer
        # a single chain (the common Sequential-like case) runs as a plain loop over its
        # layers, without the per-call bookkeeping of tensors by graph node
        self._chain_layers = [n.layer for n in self.nodes] if self._is_chain() else None
        self._masked = any(n.layer.makes_mask for n in self.nodes)

    def inner_layers(self, layer: nn.Module, graphs: dict | None = None) -> list[Layer]:
        """`[layer]`, or for a model called as a layer in this graph its own layers in the
        order of its `get_weights`."""
        graphs = {id(n.nested.layer): n.nested.graph for n in self.nodes if n.nested} \
            if graphs is None else graphs
        return graphs[id(layer)].weight_layers() if id(layer) in graphs else [layer]

    def weight_layers(self) -> list[Layer]:
        """The layers in the order of Keras's `get_weights`: `keras_layers`, each called
        model replaced by its own layers in its order; each layer once."""
        graphs = {id(n.nested.layer): n.nested.graph for n in self.nodes if n.nested}
        out, seen = [], set()
        for layer in self.keras_layers:
            for leaf in self.inner_layers(layer, graphs):
                if id(leaf) not in seen and not isinstance(leaf, InputLayer):
                    seen.add(id(leaf))
                    out.append(leaf)
        return out

    def outputs_of(self, layer: nn.Module) -> list[KerasTensor]:
        """The output tensors of `layer`'s last call in this graph (a summary's shape)."""
        units = [n.nested or n for n in self.nodes]
        return next(u.outputs for u in reversed(units) if u.layer is layer)

    def call_symbolic(self, xs: list[KerasTensor], model: nn.Module,
                      training: bool | None = None):
        """Call this graph's layers on `xs`, as the model `model` called as a layer: new
        nodes in the caller's graph, marked as one NestedCall. `training` (True/False) is
        recorded on each, as Keras records `base(x, training=False)`, and wins over a
        layer's own, as Keras's call-context `training` does."""
        if [t.shape for t in xs] != [t.shape for t in self.input_tensors]:
            raise ValueError(f"model {model.name!r} takes inputs of shapes "
                             f"{[_fmt(t.shape) for t in self.input_tensors]}, got "
                             f"{[_fmt(t.shape) for t in xs]}")
        call = NestedCall(model, self, list(xs), training)
        values = {id(t): x for t, x in zip(self.input_tensors, xs)}
        for node in self.nodes:
            args = [values[id(t)] for t in node.inputs]
            out = node.layer(args if node.takes_list else args[0], **node.kwargs)
            made = out if isinstance(out, list) else [out]
            made[0].node.nested = call
            made[0].node.training = node.training if training is None else training
            values.update((id(t), o) for t, o in zip(node.outputs, made))
        call.outputs = [values[id(t)] for t in self.output_tensors]
        if self.output_keys is not None:  # Keras gives a dict-output model's dict back
            return dict(zip(self.output_keys, call.outputs))
        return call.outputs[0] if len(call.outputs) == 1 else list(call.outputs)

    def keyed(self, outputs):
        """`outputs` (what forward returned) as {key: output} for dict outputs, else as is."""
        if self.output_keys is None:
            return outputs
        flat = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return dict(zip(self.output_keys, flat))

    @property
    def input_names(self) -> list[str]:
        return [t.node.layer.name for t in self.input_tensors]

    @property
    def output_layers(self) -> list:
        return [t.node.layer for t in self.output_tensors]

    def forward(self, *xs, recorded_modes: bool = False):
        """The outputs for inputs `xs`, every layer in the module's train/eval mode.

        `recorded_modes=True` (Keras's `model(x)` without `training=`) runs each layer
        called with `training=True/False` in that mode instead. fit, evaluate and predict
        leave it off: their mode wins, as Keras 3's `training=` does over the graph's."""
        chain = self._chain_layers
        if (chain is None or self._masked or len(xs) != 1 or CALLS.inside or ADDED.any
                or not isinstance(xs[0], torch.Tensor)):
            # the outermost call: it clears the losses the layers added before (add_loss)
            return run_call(self, self._run, xs, {"recorded_modes": recorded_modes})
        # a chain, the outermost call with no loss to clear (none was ever added): run_call's
        # work is setting `inside`; a layer without hooks runs as `layer.call(x)`, which is
        # what `layer(x)` comes to (base.runs_direct), without its five Python frames
        CALLS.inside = True
        try:
            x = xs[0]
            for layer in chain:
                if (runs_direct(type(layer)) and layer.built and hook_free(layer)
                        and layer.__dict__.get("activity_regularizer") is None
                        and getattr(x, "_keras_mask", None) is None):
                    x = layer.call(x)
                else:  # hooks (FSDP, tensor parallel, the user's), a mask: the full call
                    x = layer(x)
            return x
        finally:
            CALLS.inside = False

    def _run(self, *xs, recorded_modes: bool = False):
        if len(xs) != len(self.input_tensors):
            raise ValueError(f"model takes {len(self.input_tensors)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(xs)}")
        if self._chain_layers is not None and not self._masked:
            x = xs[0]
            for layer in self._chain_layers:
                x = layer(x)
            return x
        values = {id(t): x for t, x in zip(self.input_tensors, xs)}
        masks: dict[int, torch.Tensor] = {}  # time-step masks by graph tensor, kept here
        for node in self.nodes:                # rather than on tensors a wrapper may replace
            args = [values[id(t)] for t in node.inputs]
            # a layer of many inputs (a merge, attention) gets one mask (or None) per input
            given = [masks.get(id(t)) for t in node.inputs] if node.takes_list else \
                masks.get(id(node.inputs[0])) if node.inputs else None
            has_mask = any(m is not None for m in given) if node.takes_list else given is not None
            kwargs = {**node.kwargs, **({"mask": given} if has_mask
                                        and node.layer.takes_mask else {})}
            if node.training is None or not recorded_modes:
                out = node.layer(args if node.takes_list else args[0], **kwargs)
            else:  # Keras's layer(x, training=...) in a call without training=
                with train_mode(node.layer, node.training):
                    out = node.layer(args if node.takes_list else args[0], **kwargs)
            if self._masked:
                out_mask = node.layer.compute_mask(args if node.takes_list else args[0], given)
                if out_mask is not None:
                    masks[id(node.outputs[0])] = out_mask
            if len(node.outputs) > 1:  # return_state: [output, *states]
                values.update((id(t), o) for t, o in zip(node.outputs, out))
            else:
                values[id(node.outputs[0])] = out
        outs = [values[id(t)] for t in self.output_tensors]
        for t, out in zip(self.output_tensors, outs):  # Keras's place for it: the loss and
            if id(t) in masks:                          # the metrics read it there
                out._keras_mask = masks[id(t)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def chain(self) -> nn.Sequential | None:
        """The layers as an `nn.Sequential` when the graph is a single chain, else None.

        Pipeline and tensor-parallel strategies split chain models at layer boundaries.
        """
        return nn.Sequential(*[n.layer for n in self.nodes]) if self._is_chain() else None

    def _is_chain(self) -> bool:
        """One input, one output, and every layer takes the previous layer's output."""
        if len(self.input_tensors) != 1 or len(self.output_tensors) != 1:
            return False
        prev = self.input_tensors[0]
        for node in self.nodes:
            if (node.takes_list or node.kwargs or node.training is not None
                    or len(node.inputs) != 1
                    or len(node.outputs) != 1 or node.inputs[0] is not prev):
                return False
            prev = node.outputs[0]
        return prev is self.output_tensors[0]


def _config(layer) -> dict:
    """The layer's constructor arguments, with `trainable=False` where it is frozen, and
    the activity_regularizer every Layer takes (its own get_config may not list it)."""
    config = layer.get_config()
    reg = getattr(layer, "activity_regularizer", None)
    if reg is not None and "activity_regularizer" not in config:
        from bigtrain.api.regularizers import serialize
        config = {**config, "activity_regularizer": serialize(reg)}
    return config if getattr(layer, "trainable", True) else {**config, "trainable": False}


def _entry(unit, ref: str, names: dict) -> dict:
    """One layer call (or model call) of `graph_config`."""
    nested = isinstance(unit, NestedCall)
    entry = {"class": unit.layer.keras_kind if nested else type(unit.layer).__name__,
             "config": unit.layer.get_config() if nested else _config(unit.layer),
             "inbound": [names[id(t)] for t in unit.inputs], "ref": ref,
             "list": len(unit.inputs) > 1 if nested else unit.takes_list,
             "kwargs": {} if nested else unit.kwargs}
    if nested:
        entry["model"] = True  # a model called as a layer: rebuilt whole, then called
    if unit.training is not None:
        entry["training"] = unit.training
    return entry


def graph_config(module: GraphModule) -> dict:
    """A JSON-serialisable description of the graph (layer configs and their connections);
    a model called as a layer is one entry holding its own config."""
    names = {}
    entries = []
    for t in module.input_tensors:
        names[id(t)] = t.node.layer.name
        entries.append({"class": "InputLayer", "config": t.node.layer.get_config(), "inbound": []})
    units = [u for u in _build_map(module.output_tensors)[0]
             if not isinstance(u.layer, InputLayer)]
    for i, unit in enumerate(units):
        ref = f"{unit.layer.name}@{i}"
        entries.append(_entry(unit, ref, names))
        names[id(unit.outputs[0])] = ref
        names.update((id(t), f"{ref}#{j}") for j, t in enumerate(unit.outputs) if j)
    config = {"nodes": entries, "inputs": [names[id(t)] for t in module.input_tensors],
              "outputs": [names[id(t)] for t in module.output_tensors]}
    if module.output_keys is not None:
        config["output_keys"] = module.output_keys
    return config


def _no_models(config: dict):
    raise ValueError(f"the saved graph calls the model {config.get('name')!r} as a layer; "
                     "rebuild it with bigtrain.models.load_model or Model.from_config")


def graph_from_config(config: dict, custom_objects: dict | None = None,
                      build_model=_no_models) -> GraphModule:
    """Rebuild a GraphModule from `graph_config` output (weights are loaded separately).

    Args:
        custom_objects: {class name: Layer subclass} for layer classes bigtrain does not have.
        build_model: `build_model(config) -> model`, a new model from the config of a model
            called as a layer (Model.get_config's dict).
    """
    from bigtrain.api.layers import Input
    classes = layer_classes(custom_objects)
    tensors, layers = {}, {}
    for entry in config["nodes"]:
        cfg = dict(entry["config"])
        if entry["class"] == "InputLayer":
            tensors[cfg["name"]] = Input(tuple(cfg["shape"]), dtype=cfg["dtype"],
                                         name=cfg["name"])
            continue
        args = [tensors[r] for r in entry["inbound"]]
        training = entry.get("training")
        if entry.get("model"):
            model = layers.get(cfg["name"]) or build_model(cfg)
            layers[cfg["name"]] = model
            out = model(*args, training=training)
            if isinstance(out, dict):  # a model of dict outputs: its outputs in key order
                out = list(out.values()) if len(out) > 1 else next(iter(out.values()))
        else:
            layer = layers.get(cfg["name"]) or classes(entry["class"])(**cfg)
            layers[cfg["name"]] = layer
            kwargs = entry.get("kwargs", {})
            out = layer(args, **kwargs) if entry["list"] else layer(args[0], **kwargs)
            (out[0] if isinstance(out, list) else out).node.training = training
        if isinstance(out, list):  # return_state, several outputs: refs ref, ref#1, ref#2
            tensors.update((entry["ref"] + (f"#{j}" if j else ""), t) for j, t in enumerate(out))
        else:
            tensors[entry["ref"]] = out
    return GraphModule([tensors[r] for r in config["inputs"]],
                       [tensors[r] for r in config["outputs"]], config.get("output_keys"))


def graph_outputs(graph: GraphModule):
    """The `outputs` argument of Model that rebuilds `graph`'s model: a dict for keyed
    outputs, else the list."""
    if graph.output_keys is None:
        return graph.output_tensors
    return dict(zip(graph.output_keys, graph.output_tensors))


def layer_classes(custom_objects: dict | None):
    """`lookup(class name) -> Layer class`: bigtrain's layers, then `custom_objects`."""
    from bigtrain.api.layers import LAYER_CLASSES
    known = {**LAYER_CLASSES, **(custom_objects or {})}

    def lookup(name: str):
        if name not in known:
            raise ValueError(f"unknown layer class {name!r} in the saved model; pass its class "
                             f"as custom_objects={{{name!r}: {name}}}")
        return known[name]
    return lookup
