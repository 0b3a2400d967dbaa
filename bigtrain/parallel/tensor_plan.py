"""Tensor-parallel plans and their application: which Linear is split how, and DTensor.

Plans follow Megatron: a column-wise Linear (weight split on its output features) feeds a
row-wise Linear (weight split on its input features), so the pair needs one all-reduce in
forward (after the row-wise Linear) and one in backward (before the column-wise one).

Where a Linear's style comes from, first match wins:
    1. the model declares it: any sub-module with a `tp_plan(degree)` method returning
       {its own Linear's local name: style} (bigtrain.zoo.gpt's attention and MLP do, so a
       GPT, its pipeline stages and a Keras-style TransformerBlock built on those blocks all
       get the Megatron plan); names are prefixed with the sub-module's qualified name;
    2. the generic fallback for any other nn.Module (`_chain_plan`): a chain of Linears
       (e.g. 1000 -> 512 relu -> 10) alternates colwise, rowwise, colwise, ...
        pairs form only across element-wise layers (activations, dropout), and in a
        functional model only where the row-wise Linear alone reads the colwise one's
        output (not two heads, a skip, a concat: bigtrain.parallel.tensor_flow); a colwise
        Linear without a row-wise partner all-gathers its output ("colwise_gather");
        a Linear whose out width does not divide by T (a 3-class output) stays replicated.
        A Linear whose owner applies an activation that is not element-wise (a Keras
        Dense with softmax, or any callable it cannot see into) gathers its output
        before that activation: softmax over half the features would be wrong.
Linears whose weight is tied to another module (a GPT's lm_head) stay replicated either way,
and so do layers whose weights a parent's forward reads itself (`F.linear(h, self.emb.weight)`,
found by `outside_reads`): a sharded weight there would meet replicated activations. A
declared plan with such a layer (a GPT MLP's c_fc) stays replicated whole, as its pairs would
no longer match.

`overrides={"regex": "colwise" | "colwise_gather" | "rowwise" | "replicate"}` then changes
the style of the Linears whose qualified name matches (re.search, like Keras's LayoutMap).

Example:
    plan = tp_plan(model, 2, overrides={r"mlp\\.c_fc": "replicate"})
    apply_tp(model, mesh["tp"], plan)
"""
from __future__ import annotations

import re
import warnings
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.layer_split import SplitsItself
from bigtrain.parallel.param_reads import outside_reads
from bigtrain.parallel.tensor_flow import pair_check
from bigtrain.parallel.tensor_random import split_streams

STYLES = ("colwise", "colwise_gather", "rowwise", "replicate")
#: layers that act element-wise, so a colwise output may flow through them still sharded
ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
               nn.Dropout, nn.Identity, nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6)
#: activations by Keras name (Dense(activation=...)) that act element-wise; softmax does not
ELEMENTWISE_NAMES = frozenset({"linear", "relu", "gelu", "tanh", "sigmoid", "elu", "selu",
                               "softplus", "silu", "swish", "leaky_relu"})
#: element-wise torch functions passed as a callable activation
ELEMENTWISE_FUNCTIONS = (torch.relu, torch.tanh, torch.sigmoid, F.relu, F.gelu, F.silu,
                         F.elu, F.selu, F.softplus, F.leaky_relu, F.tanh, F.sigmoid)


def tp_plan(module: nn.Module, degree: int,
            overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Style per Linear (qualified name -> one of STYLES) for `degree`-way TP.

    Args:
        module: any module; sub-modules that declare `tp_plan(degree)` (a GPT's attention
            and MLP) get their own plan, other Linears the chain rule (module docstring).
        degree: tensor-parallel degree T.
        overrides: regex -> style, applied last.

    Example:
        tp_plan(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)), 2)
        # {"0": "colwise", "2": "rowwise"}
    """
    tied = _tied_linears(module)
    reads = outside_reads(module)
    groups = [[f"{prefix}{local}" for local in m.tp_plan(degree)] for prefix, m in
              _declaring(module)]
    plan = {f"{prefix}{local}": style for prefix, m in _declaring(module)
            for local, style in m.tp_plan(degree).items()}
    plan.update(_chain_plan(module, degree, skip=set(plan) | tied | reads))
    for name, m in module.named_modules():  # conv channels, attention heads: see layer_split
        if isinstance(m, SplitsItself):
            plan[name] = "split" if m.tp_split(degree) is None else "replicate"
    unsafe = tied | {n for n in plan if any(r == n or r.startswith(n + ".") for r in reads)}
    kept = set(unsafe)
    for group in groups:  # a colwise layer without its rowwise partner would be wrong
        if kept.intersection(group):
            kept.update(group)
    for name in kept:
        plan[name] = "replicate"
    for pattern, style in check_styles(overrides).items():
        for name in plan:
            if re.search(pattern, name):
                if style != "replicate" and name in unsafe:
                    raise ValueError(_unsafe_override(pattern, style, name, name in tied))
                plan[name] = style
    return plan


def _unsafe_override(pattern: str, style: str, name: str, tied: bool) -> str:
    """Why plan override `pattern` -> `style` cannot split layer `name`."""
    why = ("shares its weight with another layer (tied, e.g. an lm_head and the token "
           "embedding): a split weight would no longer be the other layer's, and the two "
           "would train apart" if tied else
           "has weights its parent's forward reads itself (F.linear(h, self.layer.weight)): "
           "that code would meet a split weight beside whole activations")
    return (f"TensorParallel(plan={{{pattern!r}: {style!r}}}) would split {name!r}, which "
            f"{why}; leave it replicated (a pattern that does not match {name!r}, or "
            "'replicate')")


def _declaring(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name prefix, sub-module) of the sub-modules that declare a `tp_plan(degree)`."""
    return [(f"{name}." if name else "", m) for name, m in module.named_modules()
            if callable(getattr(m, "tp_plan", None))]


def check_styles(overrides: Mapping[str, str] | None) -> Mapping[str, str]:
    """`overrides` (regex -> style), or ValueError naming an unknown style."""
    for pattern, style in (overrides or {}).items():
        if style not in STYLES:
            raise ValueError(f"unknown tensor-parallel style {style!r} for {pattern!r}; "
                             f"valid styles: {', '.join(STYLES)}")
    return overrides or {}


def _tied_linears(module: nn.Module) -> set[str]:
    """Linears whose weight is shared with another module (e.g. a tied lm_head)."""
    owners: dict[int, list[str]] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(name)
    lin = {n for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    return {n for names in owners.values() if len(set(names)) > 1 for n in names if n in lin}


def _chain_plan(module: nn.Module, degree: int, skip: set[str]) -> dict[str, str]:
    """Alternate colwise/rowwise over the Linears in registration order (see docstring);
    Linears inside a forward the planner cannot see stay replicated (`hidden_linears`)."""
    plan: dict[str, str] = {}
    pending: str | None = None  # a colwise Linear whose sharded output is still flowing
    hidden = set(_hidden_leaves(module))  # below a custom forward: barriers, replicated
    may_pair = pair_check(module, _passes_split)  # a graph: the partner is the sole reader
    for name, m in module.named_modules():
        if next(m.children(), None) is not None:
            continue  # only leaves; containers hold no computation of their own
        if name in hidden and isinstance(m, nn.Linear) and name not in skip:
            plan[name] = "replicate"
        if isinstance(m, nn.Linear) and name not in skip and name not in hidden:
            if (pending and m.in_features == module.get_submodule(pending).out_features
                    and may_pair(pending, name)):
                plan[name], pending = "rowwise", None
                continue
            if pending:
                plan[pending] = "colwise_gather"
            if m.out_features % degree:
                plan[name], pending = "replicate", None
            elif _owner_keeps_elementwise(module, name):
                plan[name], pending = "colwise", name
            else:  # e.g. Dense(softmax): gather the features before the activation
                plan[name], pending = "colwise_gather", None
        elif pending and (name in hidden or not _elementwise_leaf(m)):
            plan[pending], pending = "colwise_gather", None
    if pending:
        plan[pending] = "colwise_gather"
    return plan


def _passes_split(layer: nn.Module) -> bool:
    """A functional graph's layer that a column-split output may cross still split: no
    weights, element-wise (an Activation layer)."""
    return next(layer.parameters(), None) is None and _elementwise_leaf(layer)


def _visible(m: nn.Module) -> bool:
    """Whether the planner knows what `m`'s forward does between its children: an
    nn.Sequential, or a bigtrain module (Keras-style graph, Model, layer) that runs its
    children in registration order. A forward written elsewhere may apply anything between
    two Linears (F.normalize, a functional softmax, a learnable gate, a buffer)."""
    if type(m).forward in (nn.Sequential.forward, nn.Module.forward):
        return True  # a chain, or a holder with no forward (ModuleDict): its owner decides
    code = [getattr(type(m), a, None) for a in ("forward", "call")]
    return all(f is None or getattr(f, "__module__", "").startswith("bigtrain.") for f in code)


def hidden_linears(module: nn.Module) -> list[str]:
    """Linears (qualified names) below a module whose forward the planner cannot see
    (`_visible`), sub-modules that declare `tp_plan` excepted: the chain rule cannot pair
    them safely, so they stay replicated unless a plan override names a style."""
    return [n for n in _hidden_leaves(module) if isinstance(module.get_submodule(n), nn.Linear)]


def _hidden_leaves(module: nn.Module) -> list[str]:
    """Leaf modules below a module whose forward the planner cannot see (see above)."""
    out = []

    def walk(m: nn.Module, prefix: str, seen: bool):
        if callable(getattr(m, "tp_plan", None)) or isinstance(m, SplitsItself):
            return  # declares its own split
        for name, child in m.named_children():
            full = f"{prefix}{name}"
            if next(child.children(), None) is None and not seen:
                out.append(full)
            walk(child, f"{full}.", seen and _visible(child))
    walk(module, "", _visible(module))
    return out


def _elementwise_activation(act, name: str | None) -> bool:
    """Whether an activation (a module, a Keras name, or a callable) acts element-wise;
    a callable it cannot see into (a Python function, nn.Softmax) counts as not."""
    if isinstance(act, nn.Module):
        return isinstance(act, ELEMENTWISE)
    if name is not None:
        return name in ELEMENTWISE_NAMES
    return any(act is f for f in ELEMENTWISE_FUNCTIONS)


def _elementwise_leaf(m: nn.Module) -> bool:
    """A leaf module that acts element-wise: ReLU & co, or a Keras Activation layer."""
    if isinstance(m, ELEMENTWISE):
        return True
    act = getattr(m, "activation", None)
    return act is not None and (getattr(m, "defer_activation", False) or
                                _elementwise_activation(act, getattr(m, "activation_name", None)))


def _owner_keeps_elementwise(module: nn.Module, name: str) -> bool:
    """Whether the module owning Linear `name` applies only element-wise functions to its
    output in its own forward (a Keras Dense applies `activation` there)."""
    owner = module.get_submodule(name.rpartition(".")[0])
    act = getattr(owner, "activation", None)
    if act is None or getattr(owner, "defer_activation", False):
        return True
    return _elementwise_activation(act, getattr(owner, "activation_name", None))


def check_tp(module: nn.Module, degree: int) -> None:
    """Raise ValueError when a sub-module's declared plan cannot split it `degree` ways (e.g.
    attention heads not divisible by the degree); the message names the sub-module."""
    for prefix, m in _declaring(module):
        try:
            m.tp_plan(degree)
        except ValueError as e:
            raise ValueError(f"{prefix[:-1] or type(m).__name__} {e}") from None


def apply_tp(module: nn.Module, tp_mesh, plan: Mapping[str, str]) -> nn.Module:
    """Shard `module`'s Linears in place on the 1-D `tp_mesh` following `plan`.

    Collectives (per colwise -> rowwise pair): all-reduce of the output in forward (rowwise),
    all-reduce of the input gradient in backward (colwise); all-gather for colwise_gather.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel,
              "colwise_gather": lambda: ColwiseParallel(output_layouts=Replicate())}
    parallel = {n: styles[s]() for n, s in plan.items() if s not in ("replicate", "split")}
    split = [n for n, s in plan.items() if s == "split"] if tp_mesh.size() > 1 else []
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if tp_mesh.size() > 1 and linears and not parallel and not split:  # (a stage may hold none)
        warnings.warn(
            f"tensor parallelism over {tp_mesh.size()} ranks splits no layer of "
            f"{type(module).__name__} ({len(linears)} Linear layers, all replicated: "
            "widths not divisible by the degree, tied weights, or a plan override): every "
            "rank computes the whole model; use a degree that divides the layer widths, or "
            "a data-parallel strategy", stacklevel=2)
    hidden = [n for n in hidden_linears(module) if plan.get(n) == "replicate"]
    if tp_mesh.size() > 1 and hidden:
        warnings.warn(
            f"tensor parallelism keeps {len(hidden)} Linear layers of {type(module).__name__} "
            f"replicated ({', '.join(hidden[:4])}{', ...' if len(hidden) > 4 else ''}): their "
            "module's forward is custom code, so what runs between them (a normalisation, "
            "a functional softmax, a gate) is unknown and a column/row split could be wrong; "
            "to split them, build the layers as an nn.Sequential or a bigtrain Model graph, "
            "declare `tp_plan(degree)` on the module, or pass TensorParallel(plan={regex: "
            "style}) naming the styles", stacklevel=2)
    if tp_mesh.size() > 1 and parallel:
        parallelize_module(module, tp_mesh, parallel)
    for name in split:  # layers that shard themselves (layer_split.SplitsItself)
        module.get_submodule(name).tp_apply(tp_mesh)
    split_streams(module, plan, tp_mesh)  # dropout on a shard: this rank's own masks
    return module


def full_tensor_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with DTensors gathered to full CPU tensors (collective over their mesh)."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = v.detach().cpu().clone()
    return out


def describe_split(module: torch.nn.Module, degree: int) -> list[str]:
    """One line per layer with weights: how `degree`-way tensor parallelism treats it.

    Example:
        describe_split(model.net, 2)
        # ["layers.conv2d: split over 2 ranks (Conv2D)", "layers.lstm: replicated (...)"]
    """
    plan = tp_plan(module, degree)
    lines = []
    for name, m in module.named_modules():
        if any(name.startswith(p + ".") for p in plan):
            continue  # inside a layer the plan already covers
        kind = type(m).__name__
        if isinstance(m, SplitsItself):
            why = m.tp_split(degree)
            lines.append(f"{name}: split over {degree} ranks ({kind})" if why is None
                         else f"{name}: replicated ({why})")
        elif name in plan:
            style = plan[name]
            lines.append(f"{name}: replicated ({kind})" if style == "replicate"
                         else f"{name}: split over {degree} ranks ({kind}, {style})")
        elif next(m.parameters(recurse=False), None) is not None:
            lines.append(f"{name}: replicated ({kind} has no tensor-parallel split)")
    return lines


def split_summary(module: torch.nn.Module, degree: int) -> str:
    """`describe_split` in one line for the plan printout: how many layers split, and each
    replicated one with the reason."""
    lines = describe_split(module, degree)
    kept = [line.replace(": replicated", "") for line in lines if ": replicated" in line]
    text = (f"tensor parallel over {degree} ranks splits {len(lines) - len(kept)} of "
            f"{len(lines)} layers with weights")
    return text + ("; replicated: " + "; ".join(kept) if kept else "")


def planned_styles(module: nn.Module, degree: int) -> dict[str, str] | None:
    """`tp_plan(module, degree)` for the planner (`plan(..., tensor_styles=...)`), so its
    tensor-parallel memory counts exactly the layers the runtime splits; None where the
    plan cannot be made here (the planner then estimates from layer widths)."""
    if degree < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp_plan(module, degree)
    except Exception:  # noqa: BLE001 - a model the runtime would refuse: the planner says so
        return None
