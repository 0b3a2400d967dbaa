"""Tensor parallelism: each Linear's weight split over `degree` ranks with DTensor.

Plans follow Megatron: a column-wise Linear (weight split on its output features) feeds a
row-wise Linear (weight split on its input features), so the pair needs one all-reduce in
forward (after the row-wise Linear) and one in backward (before the column-wise one):

    GPT block:  attn.q_proj / k_proj / v_proj  colwise   (heads split: nh / T per rank)
                attn.c_proj                    rowwise   (all-reduce -> replicated x)
                mlp.c_fc                       colwise   (4C / T per rank)
                mlp.c_proj                     rowwise
                embeddings, LayerNorms, tied lm_head: replicated

    chain of Linears (e.g. 1000 -> 512 relu -> 10):  colwise, rowwise, colwise, ...
        pairs form only across element-wise layers (activations, dropout); a colwise
        Linear without a row-wise partner all-gathers its output ("colwise_gather");
        a Linear whose out width does not divide by T (a 3-class output) stays replicated.
        A Linear whose owner applies an activation that is not element-wise (a Keras
        Dense with softmax, or any callable it cannot see into) gathers its output
        before that activation: softmax over half the features would be wrong.

`plan={"regex": "colwise" | "colwise_gather" | "rowwise" | "replicate"}` overrides the
style of the Linears whose qualified name matches (re.search, like Keras's LayoutMap).

Example:
    strategy = TensorParallel(degree=2)                      # or fit(strategy="tensor")
    strategy = TensorParallel(degree=2, plan={r"mlp\\.c_fc": "replicate"})
"""
from __future__ import annotations

import re
import warnings
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.base import Strategy, register
from bigtrain.parallel.layer_split import SplitsItself
from bigtrain.parallel.mesh import (ParallelDims, all_reduce_grads, broadcast_params,
                                    checkpoint_blocks)

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
_ATTN_OUT = ("c_proj", "o_proj", "out_proj")


def tp_plan(module: nn.Module, degree: int,
            overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Style per Linear (qualified name -> one of STYLES) for `degree`-way TP.

    Args:
        module: any module; attention (q/k/v + c_proj) and MLP (c_fc + c_proj) sub-modules
            get the GPT plan, other Linears the chain rule (module docstring).
        degree: tensor-parallel degree T.
        overrides: regex -> style, applied last.

    Example:
        tp_plan(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)), 2)
        # {"0": "colwise", "2": "rowwise"}
    """
    plan: dict[str, str] = {}
    tied = _tied_linears(module)
    for name, m in module.named_modules():
        prefix = f"{name}." if name else ""
        if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj")):
            out = next((a for a in _ATTN_OUT if hasattr(m, a)), None)
            plan.update({prefix + a: "colwise" for a in ("q_proj", "k_proj", "v_proj")})
            if out:
                plan[prefix + out] = "rowwise"
        elif hasattr(m, "c_fc") and hasattr(m, "c_proj"):
            plan.update({prefix + "c_fc": "colwise", prefix + "c_proj": "rowwise"})
    plan.update(_chain_plan(module, degree, skip=set(plan) | tied))
    for name, m in module.named_modules():  # conv channels, attention heads: see layer_split
        if isinstance(m, SplitsItself):
            plan[name] = "split" if m.tp_split(degree) is None else "replicate"
    for name in tied:
        plan[name] = "replicate"
    for pattern, style in (overrides or {}).items():
        if style not in STYLES:
            raise ValueError(f"unknown tensor-parallel style {style!r} for {pattern!r}; "
                             f"valid styles: {', '.join(STYLES)}")
        for name in plan:
            if re.search(pattern, name):
                plan[name] = style
    return plan


def _tied_linears(module: nn.Module) -> set[str]:
    """Linears whose weight is shared with another module (e.g. a tied lm_head)."""
    owners: dict[int, list[str]] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(name)
    lin = {n for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    return {n for names in owners.values() if len(set(names)) > 1 for n in names if n in lin}


def _chain_plan(module: nn.Module, degree: int, skip: set[str]) -> dict[str, str]:
    """Alternate colwise/rowwise over the Linears in registration order (see docstring)."""
    plan: dict[str, str] = {}
    pending: str | None = None  # a colwise Linear whose sharded output is still flowing
    for name, m in module.named_modules():
        if next(m.children(), None) is not None:
            continue  # only leaves; containers hold no computation of their own
        if isinstance(m, nn.Linear) and name not in skip:
            if pending and m.in_features == module.get_submodule(pending).out_features:
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
        elif not _elementwise_leaf(m) and pending:
            plan[pending], pending = "colwise_gather", None
    if pending:
        plan[pending] = "colwise_gather"
    return plan


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
    """Raise ValueError when `module`'s attention heads cannot be split `degree` ways."""
    for name, m in module.named_modules():
        if hasattr(m, "q_proj") and hasattr(m, "head_dim"):
            heads = m.q_proj.out_features // m.head_dim
            if heads % degree:
                ok = [d for d in range(1, heads + 1) if heads % d == 0]
                raise ValueError(
                    f"{name or 'attention'} has {heads} heads, not divisible by the tensor "
                    f"degree {degree}; use a degree in {ok} or a head count divisible by "
                    f"{degree}")


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
    if tp_mesh.size() > 1 and linears and not parallel and not split:  # (a pipeline stage may hold none)
        warnings.warn(
            f"tensor parallelism over {tp_mesh.size()} ranks splits no layer of "
            f"{type(module).__name__} ({len(linears)} Linear layers, all replicated: "
            "widths not divisible by the degree, tied weights, or a plan override): every "
            "rank computes the whole model; use a degree that divides the layer widths, or "
            "a data-parallel strategy", stacklevel=2)
    if tp_mesh.size() > 1 and parallel:
        parallelize_module(module, tp_mesh, parallel)
    for name in split:  # layers that shard themselves (layer_split.SplitsItself)
        module.get_submodule(name).tp_apply(tp_mesh)
    return module


def full_tensor_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with DTensors gathered to full CPU tensors (collective over their mesh)."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = v.detach().cpu().clone()
    return out


class TensorParallel(Strategy):
    """Megatron-style tensor parallelism on DTensor; extra ranks become data-parallel.

    With world size W and degree T, W / T replicas each shard the model T ways; replicas
    average gradients with one all-reduce per step over the "dp" mesh dimension.

    Args:
        degree: tensor-parallel degree T (W must be a multiple of it); None: the world size.
        plan: optional regex -> style overrides (see module docstring).
        activation_checkpointing: recompute each block's activations in backward.

    Example:
        model.fit(x, y, strategy=TensorParallel(degree=2), devices=2)
    """

    name = "tensor_parallel"

    def __init__(self, degree: int | None = None, plan: Mapping[str, str] | None = None,
                 activation_checkpointing: bool = False):
        super().__init__()
        if degree is not None and (not isinstance(degree, int) or degree < 1):
            raise ValueError(f"TensorParallel degree must be an integer >= 1, got {degree!r}")
        for pattern, style in (plan or {}).items():
            if style not in STYLES:
                raise ValueError(f"unknown tensor-parallel style {style!r} for {pattern!r}; "
                                 f"valid styles: {', '.join(STYLES)}")
        self.degree = degree
        self.plan = dict(plan or {})
        self.activation_checkpointing = activation_checkpointing
        self.dims = None
        self.mesh = None

    def num_processes(self, devices):
        return (self.degree or 1) if devices is None else int(devices)

    def _degree(self, world_size: int) -> int:
        return world_size if self.degree is None else self.degree

    def validate(self, world_size: int, global_batch_size: int) -> None:
        dims = ParallelDims.infer(world_size, tp=self._degree(world_size))
        if global_batch_size % dims.dp:
            raise ValueError(f"global batch {global_batch_size} does not split over {dims.dp} "
                             f"data-parallel replicas; use a batch size divisible by {dims.dp}")

    def check_model(self, module: nn.Module, world_size: int) -> None:
        check_tp(module, self._degree(world_size))

    def setup(self, env) -> None:
        super().setup(env)
        self.dims = ParallelDims.infer(env.world_size, tp=self._degree(env.world_size))
        self.mesh = self.dims.build_mesh(env.device.type) if env.distributed else None

    def setup_module(self, module: nn.Module) -> nn.Module:
        degree = self._degree(self.env.world_size)
        check_tp(module, degree)  # same error on every rank, before any collective
        module = module.to(self.env.device)
        if self.activation_checkpointing:
            checkpoint_blocks(module)
        if self.mesh is not None:
            apply_tp(module, self.mesh["tp"], tp_plan(module, degree, self.plan))
            broadcast_params(module.parameters(), self.mesh["dp"].get_group())
        return module

    def data_shard(self) -> tuple[int, int]:
        if self.dims is None or self.mesh is None:
            return (0, 1)
        return (self.dims.coords(self.env.rank)["dp"], self.dims.dp)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.mesh is not None:
            self.mark("gradient all-reduce (dp)", phase="comm")
            params = [p for g in optimizer.param_groups for p in g["params"]]
            all_reduce_grads(params, self.mesh["dp"].get_group())
            self.mark("optimizer step")
        self.apply_update(optimizer)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return full_tensor_state_dict(self.unwrap(module))

    def teardown(self) -> None:
        self.mesh = None

    timing_note = ("comm_exposed is the data-parallel gradient all-reduce; the tensor-parallel "
                   "collectives inside the layers are counted in forward and backward")

    def describe(self) -> str:
        return f"degree={self.degree or 'world'}" + (f", plan={self.plan}" if self.plan else "")

    def __eq__(self, other):
        return (type(self) is type(other) and self.degree == other.degree
                and self.plan == other.plan
                and self.activation_checkpointing == other.activation_checkpointing)


# degree=None: as many shards as processes (resolved in validate/setup)
register("tensor", TensorParallel)
register("tensor_parallel", TensorParallel)
