"""A layer's place in the graphs it was called in, as Keras's `layer.output` and
`layer.input` read it: the tensors of its first call on Input tensors.

Example:
    base = Model(inputs, outputs)
    features = Model(base.input, base.get_layer("pool").output)   # a feature extractor
"""
from __future__ import annotations


class GraphPlace:
    """Mixed into `Layer`: its symbolic calls (`bigtrain.api.layers.symbolic.Node`), in
    order, and Keras's `output`/`input` of the first one."""

    def record_node(self, node) -> None:
        """Keep one symbolic call of this layer (Layer.__call__ on KerasTensors)."""
        self.__dict__.setdefault("_inbound_nodes", []).append(node)

    @property
    def output(self):
        """The output of this layer's first call on Input tensors (a list for several)."""
        node = self._first_node("output")
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    @property
    def input(self):
        """The tensor(s) this layer's first call on Input tensors took."""
        node = self._first_node("input")
        if not node.inputs:  # an InputLayer: its input is its output, as in Keras
            return node.outputs[0]
        return list(node.inputs) if node.takes_list else node.inputs[0]

    def _first_node(self, what: str):
        nodes = self.__dict__.get("_inbound_nodes")
        if not nodes:
            raise AttributeError(f"layer {self.name!r} has never been called on Input tensors "
                                 f"and thus has no defined {what}")
        return nodes[0]
