"""Which Linear may read another's column-split output, from a functional model's graph.

A column-wise Linear leaves its output split over the tensor-parallel ranks (each holds
out / T features); only its row-wise partner may read that split output. In a chain
(nn.Sequential) the next Linear is that partner, but in a functional model (a bigtrain
GraphModule) registration order says nothing about data flow: one Dense may feed two heads,
a skip connection (Add) or a Concatenate, and a head that got the split features would
multiply (B, out / T) by a weight made for (B, out).

`pair_check(module)` answers `may_pair(col, row)` for two Linears (qualified names):

    in no graph (a chain, a module whose forward runs its children in order):  True,
        the chain rule of bigtrain.parallel.tensor_plan decides alone;
    both in one graph:  every call of `col`'s layer feeds exactly one call of `row`'s
        layer, through element-wise layers only (an Activation), and nothing else reads
        the tensors on the way (no other layer, no model output); every call of `row`'s
        layer reads such a path;
    otherwise (two graphs, a layer holding several Linears):  False.

Example:
    may_pair = pair_check(model)
    may_pair("net.layers.h.linear", "net.layers.p.linear")   # False: h also feeds c
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from bigtrain.parallel.lazy_types import loaded_instance


def pair_check(module: nn.Module,
               passes: Callable[[nn.Module], bool]) -> Callable[[str, str], bool]:
    """`may_pair(col, row)` for `module`'s Linears (see module docstring).

    Args:
        module: the model the tensor plan is made for.
        passes: whether a graph layer acts element-wise (its output may stay split).
    """
    owners = _graph_owners(module)

    def may_pair(col: str, row: str) -> bool:
        if col not in owners and row not in owners:
            return True
        if col not in owners or row not in owners or owners[col][0] is not owners[row][0]:
            return False
        graph = owners[col][0]
        return _sole_path(graph, owners[col][1], owners[row][1], passes)
    return may_pair


def _graph_owners(module: nn.Module) -> dict[str, tuple[nn.Module, nn.Module | None]]:
    """Linear name -> (its GraphModule, the graph layer owning it); the layer is None when
    it holds other Linears too (its own forward decides what reaches which)."""
    owners = {}
    for prefix, graph in module.named_modules():
        if not loaded_instance(graph, "bigtrain.api.functional", "GraphModule"):
            continue
        base = f"{prefix}.layers" if prefix else "layers"
        for key, layer in graph.layers.items():
            linears = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
            for sub in linears:
                name = f"{base}.{key}" + (f".{sub}" if sub else "")
                owners[name] = (graph, layer if len(linears) == 1 else None)
    return owners


def _sole_path(graph, col_layer, row_layer, passes) -> bool:
    """Every call of `col_layer` reaches one call of `row_layer` alone, through layers that
    `passes`, and every call of `row_layer` is reached that way."""
    if col_layer is None or row_layer is None or col_layer is row_layer:
        return False
    readers: dict[int, list] = {}  # graph tensor -> the nodes that read it
    for node in graph.nodes:
        for t in node.inputs:
            readers.setdefault(id(t), []).append(node)
    outputs = {id(t) for t in graph.output_tensors}
    calls = [n for n in graph.nodes if n.layer is col_layer]
    if not calls or not all(_forward_ok(n, row_layer, readers, outputs, passes) for n in calls):
        return False
    return all(_back_ok(n, col_layer, passes) for n in graph.nodes if n.layer is row_layer)


def _single(node) -> bool:
    return len(node.inputs) == 1 and len(node.outputs) == 1 and not node.takes_list


def _forward_ok(node, row_layer, readers, outputs, passes) -> bool:
    """From `node`'s output, one reader at a time, through passing layers to `row_layer`."""
    while _single(node):
        t = node.outputs[0]
        nxt = readers.get(id(t), [])
        if id(t) in outputs or len(nxt) != 1 or not _single(nxt[0]):
            return False
        node = nxt[0]
        if node.layer is row_layer:
            return True
        if not passes(node.layer):
            return False
    return False


def _back_ok(node, col_layer, passes) -> bool:
    """From `node`'s input back through passing layers to a call of `col_layer`."""
    while _single(node):
        node = node.inputs[0].node
        if node.layer is col_layer:
            return _single(node)
        if not passes(node.layer):
            return False
    return False
