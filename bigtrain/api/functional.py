"""Turns a graph of Keras-style layer calls into one plain `nn.Module`.

`GraphModule(inputs, outputs)` walks back from the outputs, orders the layer calls
topologically and runs them in that order. Its layers are registered under their names
(`layers.dense.linear.weight`), so the module is an ordinary torch module that every
strategy can wrap.
"""
from __future__ import annotations

import torch
from torch import nn

from bigtrain.api.layers.base import InputLayer, KerasTensor, Node


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

    def __init__(self, inputs: list[KerasTensor], outputs: list[KerasTensor]):
        super().__init__()
        self.input_tensors, self.output_tensors = list(inputs), list(outputs)
        nodes = _topological_nodes(self.output_tensors)
        given = {id(t.node) for t in self.input_tensors}
        for node in nodes:
            if isinstance(node.layer, InputLayer) and id(node) not in given:
                raise ValueError(f"the outputs depend on input {node.layer.name!r}, which is not "
                                 "in Model(inputs=...); add it to the inputs")
        self.nodes = [n for n in nodes if not isinstance(n.layer, InputLayer)]
        self.layers = nn.ModuleDict()
        for node in self.nodes:  # a shared layer is registered once
            if node.layer.name in self.layers and self.layers[node.layer.name] is not node.layer:
                raise ValueError(f"two different layers are named {node.layer.name!r}; "
                                 "give them unique names")
            self.layers[node.layer.name] = node.layer
        # a single chain (the common Sequential-like case) runs as a plain loop over its
        # layers, without the per-call bookkeeping of tensors by graph node
        self._chain_layers = [n.layer for n in self.nodes] if self._is_chain() else None
        self._masked = any(n.layer.makes_mask for n in self.nodes)

    @property
    def input_names(self) -> list[str]:
        return [t.node.layer.name for t in self.input_tensors]

    @property
    def output_layers(self) -> list:
        return [t.node.layer for t in self.output_tensors]

    def forward(self, *xs):
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
            mask = masks.get(id(node.inputs[0])) if node.inputs else None
            kwargs = {**node.kwargs, **({"mask": mask} if mask is not None
                                        and node.layer.takes_mask else {})}
            out = (node.layer(args, **kwargs) if node.takes_list
                   else node.layer(args[0], **kwargs))
            if self._masked and not node.takes_list:
                out_mask = node.layer.compute_mask(args[0], mask)
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
            if (node.takes_list or node.kwargs or len(node.inputs) != 1
                    or len(node.outputs) != 1 or node.inputs[0] is not prev):
                return False
            prev = node.outputs[0]
        return prev is self.output_tensors[0]


def _config(layer) -> dict:
    """The layer's constructor arguments, with `trainable=False` where it is frozen."""
    config = layer.get_config()
    return config if getattr(layer, "trainable", True) else {**config, "trainable": False}


def graph_config(module: GraphModule) -> dict:
    """A JSON-serialisable description of the graph (layer configs and their connections)."""
    names = {}
    entries = []
    for t in module.input_tensors:
        names[id(t)] = t.node.layer.name
        entries.append({"class": "InputLayer", "config": t.node.layer.get_config(), "inbound": []})
    for i, node in enumerate(module.nodes):
        ref = f"{node.layer.name}@{i}"
        names[id(node.outputs[0])] = ref
        names.update((id(t), f"{ref}#{j}") for j, t in enumerate(node.outputs) if j)
        entries.append({"class": type(node.layer).__name__, "config": _config(node.layer),
                        "inbound": [names[id(t)] for t in node.inputs], "ref": ref,
                        "list": node.takes_list, "kwargs": node.kwargs})
    return {"nodes": entries, "inputs": [names[id(t)] for t in module.input_tensors],
            "outputs": [names[id(t)] for t in module.output_tensors]}


def graph_from_config(config: dict, custom_objects: dict | None = None) -> GraphModule:
    """Rebuild a GraphModule from `graph_config` output (weights are loaded separately).
    `custom_objects`: {class name: Layer subclass} for layer classes bigtrain does not have."""
    from bigtrain.api.layers import Input
    classes = layer_classes(custom_objects)
    tensors, layers = {}, {}
    for entry in config["nodes"]:
        cfg = dict(entry["config"])
        if entry["class"] == "InputLayer":
            tensors[cfg["name"]] = Input(tuple(cfg["shape"]), dtype=cfg["dtype"],
                                         name=cfg["name"])
            continue
        layer = layers.get(cfg["name"]) or classes(entry["class"])(**cfg)
        layers[cfg["name"]] = layer
        args = [tensors[r] for r in entry["inbound"]]
        kwargs = entry.get("kwargs", {})
        out = layer(args, **kwargs) if entry["list"] else layer(args[0], **kwargs)
        if isinstance(out, list):  # return_state: refs ref, ref#1, ref#2
            tensors.update((entry["ref"] + (f"#{j}" if j else ""), t) for j, t in enumerate(out))
        else:
            tensors[entry["ref"]] = out
    return GraphModule([tensors[r] for r in config["inputs"]],
                       [tensors[r] for r in config["outputs"]])


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
