"""What a Keras model tells of its graph: `inputs`/`outputs` (and `input`/`output`,
`input_shape`/`output_shape`, with the batch axis as None), `built`, `output_names` and
`get_layer`. Mixed into `bigtrain.models.Model`, whose network (`self.net`) is a
`GraphModule` for functional and Sequential models, or a user's torch module (which has
no symbolic inputs: those attributes raise AttributeError, as Keras's for a model never
called).

Example:
    base = Model(inputs, outputs)
    features = Model(base.input, base.get_layer("pool").output)
"""
from __future__ import annotations

from torch import nn

from bigtrain.api import keyed_outputs
from bigtrain.api.functional import GraphModule
from bigtrain.api.layers.input_layer import InputLayer


def _one_or_all(items: list):
    """Keras's `input`/`output`: the one item, or the list of them."""
    return items[0] if len(items) == 1 else list(items)


class GraphAccess:
    """Keras's graph attributes of a model (`self.net`, `self.name`, `self.layers` and
    `keras_kind` come from Model)."""

    def _graph(self, what: str) -> GraphModule:
        if isinstance(self.net, GraphModule):
            return self.net
        why = "has no input shape yet (it is built by its first data or build())" \
            if self.net is None else "wraps a torch module, which has no symbolic graph"
        raise AttributeError(f"model {self.name!r} {why}, so it has no `{what}`")

    @property
    def built(self) -> bool:
        """Whether the model has its weights (a Sequential without input shape: not yet)."""
        return self.net is not None

    @property
    def inputs(self) -> list:
        """The model's Input tensors, in Keras's order."""
        return list(self._graph("inputs").input_tensors)

    @property
    def outputs(self) -> list:
        """The model's output tensors (of dict outputs: in key order)."""
        return list(self._graph("outputs").output_tensors)

    @property
    def input(self):
        """The Input tensor, or the list of them: `Model(base.input, ...)` builds on it."""
        return _one_or_all(self.inputs)

    @property
    def output(self):
        """The output tensor, or the list of them (a dict for dict outputs, as Keras's)."""
        graph = self._graph("output")
        if graph.output_keys is not None:
            return dict(zip(graph.output_keys, graph.output_tensors))
        return _one_or_all(self.outputs)

    @property
    def input_shape(self):
        """Keras's input shape, `(None, *shape)`, or the list of them."""
        return _one_or_all([(None, *t.shape) for t in self.inputs])

    @property
    def output_shape(self):
        """Keras's output shape, `(None, *shape)`, or the list of them."""
        return _one_or_all([(None, *t.shape) for t in self.outputs])

    @property
    def input_shapes(self) -> list[tuple] | None:
        if isinstance(self.net, GraphModule):
            return [t.shape for t in self.net.input_tensors]
        return None

    @property
    def output_shapes(self) -> list[tuple] | None:
        if isinstance(self.net, GraphModule):
            return [t.shape for t in self.net.output_tensors]
        return None

    @property
    def output_names(self) -> list[str]:
        """The outputs' names: the keys of `Model(inputs, {key: tensor})` (what the losses,
        the History and predict's dict use, as in Keras), else the output layers' names."""
        if isinstance(self.net, GraphModule):
            return list(self.net.output_keys or [layer.name for layer in self.net.output_layers])
        return keyed_outputs.output_names(self) or ["output"]

    def get_layer(self, name: str | None = None, index: int | None = None):
        """A layer by name or by index, as Keras's: a functional model's inputs come first
        (its InputLayers), a Sequential's are not counted."""
        if name is not None and index is not None:
            raise ValueError(f"Provide only a layer name or a layer index. Received: "
                             f"index={index}, name={name}.")
        named = self._keras_layers()
        if index is not None:
            if len(named) <= index:
                raise ValueError(f"Was asked to retrieve layer at index {index} but model "
                                 f"only has {len(named)} layers.")
            return named[index][1]
        if name is None:
            raise ValueError("Provide either a layer name or layer index at `get_layer`.")
        for layer_name, layer in named:
            if layer_name == name:
                return layer
        raise ValueError(f"No such layer: {name}. Existing layers are: "
                         f"{[n for n, _ in named]}.")

    def _keras_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, layer) in Keras's order of `model.layers`."""
        if isinstance(self.net, GraphModule):
            skip = InputLayer if self.keras_kind == "Sequential" else ()
            return [(m.name, m) for m in self.net.keras_layers if not isinstance(m, skip)]
        if self.net is None:
            return [(layer.name, layer) for layer in self.layers]
        return list(self.net.named_children())
