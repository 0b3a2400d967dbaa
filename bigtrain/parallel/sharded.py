"""Sharded data parallel on FSDP2 (`fully_shard`): ZeRO-2 keeps parameters gathered
between forward and backward; ZeRO-3 frees them after forward; offload keeps parameters,
gradients and optimizer state on the host (CPUOffloadPolicy) and computes on the device.

Each layer that owns parameters becomes one FSDP unit (all-gather before its forward,
reduce-scatter of its gradients in backward), then the root.

    fit(..., strategy="zero3", devices=2)
    fit(..., strategy=Sharded(reshard_after_forward=True, offload=True))  # "fsdp_offload"
"""
from __future__ import annotations

import contextlib
import inspect

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.optim.rprop import rprop

from bigtrain.parallel.base import Strategy, register
from bigtrain.parallel.data_parallel import check_batch_covers_ranks
from bigtrain.parallel.param_reads import outside_uses
from bigtrain.parallel.parallelize import parallelize
from bigtrain.parallel.unit_order import UnitOrder
from bigtrain.parallel.update_rules import rules_of

_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def shard_units(module: nn.Module) -> list[nn.Module]:
    """Submodules that directly own parameters, deepest first (each becomes an FSDP unit).

    A unit's weights are whole only inside its own forward, so these stay out:
    - modules that share a parameter (a GPT's embedding tied to its output head): FSDP
      needs a tied weight to live in one group, the root's;
    - modules whose weights other code reads itself (`F.linear(h, self.emb.weight)` in the
      parent's forward, `param_reads.outside_uses`), and the modules between them and that
      reader: their weights go to the reader's unit (the reader becomes one) or the root's.
    - modules without a forward of their own (ParameterList, ParameterDict, a holder of
      weights): nothing ever calls them, so a unit there would never gather its weights;
      they go to the unit of the module that reads them, or the root's.
    Scalar parameters are not sharded (`scalar_params`), so a module owning only those is
    no unit."""
    owners: dict[int, list[nn.Module]] = {}
    for m in module.modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(m)
    tied = {id(m) for ms in owners.values() if len(ms) > 1 for m in ms}
    kept, readers = _read_outside(module)
    units = {id(m) for m in module.modules()
             if type(m).forward is not nn.Module.forward  # it can run (see above)
             and any(p.dim() for p in m.parameters(recurse=False))} | readers
    units -= tied | kept | {id(module)}
    return [m for m in module.modules() if id(m) in units][::-1]


def _read_outside(module: nn.Module) -> tuple[set[int], set[int]]:
    """(ids of modules that must not be units, ids of reader modules that may be) for the
    weights `outside_uses` finds read outside their module's forward."""
    mods = dict(module.named_modules(remove_duplicate=False))  # a module under 2 names
    kept, readers = set(), set()
    for use in outside_uses(module):
        below = use.owner[len(use.user) + 1:] if use.user else use.owner
        parts = below.split(".")
        for i in range(1, len(parts) + 1):  # every module from the reader down to the owner
            kept.add(id(mods[".".join(filter(None, [use.user, *parts[:i]]))]))
        if use.whole:
            kept.update(id(m) for m in mods[use.owner].modules())
        if use.user and _self_contained(mods[use.user], module):
            readers.add(id(mods[use.user]))
    return kept, readers - kept


def _self_contained(sub: nn.Module, root: nn.Module) -> bool:
    """Whether no parameter below `sub` is shared with a module outside it."""
    inside = {id(p) for p in sub.parameters()}
    outside = {id(p) for m in root.modules() if not any(m is s for s in sub.modules())
               for p in m.parameters(recurse=False)}
    return not inside & outside


def scalar_params(module: nn.Module) -> list[nn.Parameter]:
    """0-dim parameters (a learnable gate, Attention's score scale): FSDP2 cannot shard
    them, so every rank keeps the whole value and `average_grads` averages their grads."""
    return [p for p in module.parameters() if p.dim() == 0]


def average_grads(params: list[nn.Parameter]) -> None:
    """Average the grads of replicated `params` over the default group: one all-reduce of
    [grads..., present...], so a grad that is None on every rank (an unused parameter)
    stays None and the ranks still agree on the collective."""
    world = dist.get_world_size()
    if not params or world == 1:
        return
    zero = torch.zeros((), dtype=torch.float32, device=params[0].device)
    packed = torch.stack([torch.stack([zero if p.grad is None else p.grad.float(), zero + (
        p.grad is not None)]) for p in params], dim=1)  # (2, n): grads, present
    dist.all_reduce(packed)
    present = packed[1].tolist()  # one read of the device
    for i, p in enumerate(params):
        if present[i] > 0:
            p.grad = (packed[0, i] / world).to(p.dtype)


class ShardRprop(torch.optim.Rprop):
    """torch's Rprop, updating each DTensor parameter through its local shard.

    torch's Rprop writes through boolean masks (`sign[sign.gt(0)] = etaplus`), an in-place
    op DTensor refuses on a sharded tensor. Rprop is element-wise (its state is one step
    size and one previous gradient per element), so updating each shard alone is exactly
    the update of the whole tensor."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lists = [], [], [], [], []  # params, grads, previous grads, step sizes, steps
            has_complex = self._init_group(group, *lists)
            params, grads, prevs, sizes, steps = ([_local(t) for t in ts] for ts in lists)
            (eta_minus, eta_plus), (size_min, size_max) = group["etas"], group["step_sizes"]
            rprop(
                params, grads, prevs, sizes, steps, foreach=group["foreach"],
                maximize=group["maximize"], differentiable=group["differentiable"],
                capturable=group["capturable"], has_complex=has_complex,
                step_size_min=size_min, step_size_max=size_max, etaminus=eta_minus,
                etaplus=eta_plus)
        return loss


def _split(t: torch.Tensor) -> bool:
    """Whether `t` is a DTensor sharded on some mesh dimension (of any size: torch's
    Adafactor fails on a 1-rank mesh's shard too, as fsdp_offload on one process has)."""
    return isinstance(t, DTensor) and any(p.is_shard() for p in t.placements)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (sharing its storage), any other tensor as is."""
    return t._local_tensor if isinstance(t, DTensor) else t


#: torch optimizers whose step needs each parameter whole, and why (refused on shards)
_WHOLE_TENSOR_RULES = {"Adafactor": "its factored second moment is a mean over whole rows "
                                    "and whole columns of each weight"}


def shard_safe(optimizer: torch.optim.Optimizer,
               strategy: str = "this strategy") -> torch.optim.Optimizer:
    """`optimizer`, or for torch's Rprop the same optimizer as a ShardRprop (same groups,
    defaults and bigtrain update rules), which runs on DTensor parameters. An optimizer
    whose rule reads a whole tensor (`_WHOLE_TENSOR_RULES`) over a split weight is refused
    with the fix: every rank builds its optimizer at the same point, so all raise together,
    before any step (inside torch it failed at the first step)."""
    name = type(optimizer).__name__
    if (type(optimizer).__module__.startswith("torch.optim") and name in _WHOLE_TENSOR_RULES
            and any(_split(p) for g in optimizer.param_groups for p in g["params"])):
        raise ValueError(
            f"torch.optim.{name} cannot step the weights {strategy} shards: "
            f"{_WHOLE_TENSOR_RULES[name]}, which torch computes on whole tensors only. Use "
            "strategy='ddp' or 'zero1' (whole weights on every rank; on one process, no "
            "strategy), or an element-wise optimizer such as 'adam'")
    if type(optimizer) is not torch.optim.Rprop:
        return optimizer
    accepted = inspect.signature(ShardRprop).parameters
    safe = ShardRprop(optimizer.param_groups,
                      **{k: v for k, v in optimizer.defaults.items() if k in accepted})
    rules = rules_of(optimizer)
    if rules is not None:
        rules.attach(safe)
    return safe


def _one_rank_group(device: torch.device) -> bool:
    """Start a process group of this process alone, on an in-process store (nothing listens
    on the network). False when one exists already (it is then not ours to destroy)."""
    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                            rank=0, world_size=1)
    return True


class Sharded(Strategy):
    """FSDP2 sharding of parameters, gradients and optimizer state.

    Args:
        reshard_after_forward: True frees gathered parameters after forward (ZeRO-3);
            False keeps them until backward (ZeRO-2: more memory, one all-gather less).
        offload: keep sharded state on the host (CPUOffloadPolicy); pinned memory only
            when an accelerator exists.
    """

    name = "zero3"
    syncs_in_backward = True
    timing_note = ("FSDP reduce-scatters gradients during backward; comm_exposed is the part "
                   "backward waits for at its end (probed); parameter all-gathers stay inside "
                   "forward and backward")

    def __init__(self, reshard_after_forward: bool = True, offload: bool = False):
        super().__init__()
        self.reshard_after_forward = reshard_after_forward
        self.offload = offload
        self.precision = "32"
        self._own_group = False
        #: trainable scalar parameters FSDP leaves whole; their grads are averaged here
        self._replicated: list[nn.Parameter] = []
        #: the units each rank's forward ran, compared before every update (several ranks)
        self._order: UnitOrder | None = None

    def use_precision(self, precision: str) -> None:
        self.precision = precision  # FSDP casts parameters through its mixed-precision policy

    def validate(self, world_size: int, global_batch_size: int) -> None:
        check_batch_covers_ranks(self.describe(), world_size, global_batch_size)

    def setup(self, env) -> None:
        super().setup(env)
        # offload is worth most on one accelerator: shard over a group of this process alone
        self._own_group = self.offload and not env.distributed and _one_rank_group(env.device)

    @property
    def sharding(self) -> bool:
        """Whether the module goes through fully_shard (several ranks, or offload on one)."""
        return self.env.distributed or self._own_group

    def teardown(self) -> None:
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()
        self._own_group = False
        self._replicated = []
        if self._order is not None:
            self._order.remove()
        self._order = None

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.env.device)
        if not self.sharding:
            return module
        (module,) = parallelize(module, None, replicate=self._fully_shard)
        return module

    def _fully_shard(self, module: nn.Module) -> nn.Module:
        """FSDP2 on each block (shard_units), then on the whole model."""
        kwargs = {"reshard_after_forward": self.reshard_after_forward}
        if self.offload:
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        if self.precision in _DTYPES:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=_DTYPES[self.precision],
                                                       reduce_dtype=torch.float32)
        self._replicated = [p for p in scalar_params(module) if p.requires_grad]
        scalars = set(scalar_params(module))
        if scalars:  # "fully_shard doesn't support scalar parameters": keep them whole
            kwargs["ignored_params"] = scalars
        units = shard_units(module)
        for unit in units:
            fully_shard(unit, **kwargs)
        fully_shard(module, **kwargs)
        if self.env.distributed and units:
            self._order = UnitOrder(units, self.env.device)
        return module

    def sync_grads(self, module, optimizer, batch, ctx) -> None:
        if self._order is not None:  # before the update: a wrongly paired step is not applied
            ctx.mark("layer order check", phase="comm")
            self._order.check()
        if self._replicated:  # FSDP reduced the sharded grads inside backward
            ctx.mark("scalar parameter gradient all-reduce", phase="comm")
            average_grads(self._replicated)

    def setup_optimizer(self, module, make_optimizer):
        # fused kernels take plain tensors; sharded parameters are DTensors
        optimizer = make_optimizer(list(module.parameters()))
        return shard_safe(optimizer, self.describe()) if self.sharding else optimizer

    def no_sync(self, module: nn.Module):
        if not self.sharding:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def skip():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        return skip()

    def unwrap(self, module):
        return module

    def full_state_dict(self, module):
        if not self.sharding:
            return super().full_state_dict(module)
        if self._order is not None:  # the steps since the last comparison, before they leave
            self._order.finish()
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                      cpu_offload=True))
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_full_state_dict(self, module, state):
        if not self.sharding:
            return super().load_full_state_dict(module, state)
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True,
                                                                     broadcast_from_rank0=True))

    def describe(self) -> str:
        stage = "zero3" if self.reshard_after_forward else "zero2"
        return stage + (" + cpu offload" if self.offload else "")


register("zero3", lambda: Sharded(reshard_after_forward=True))
register("fsdp", lambda: Sharded(reshard_after_forward=True))
register("zero2", lambda: Sharded(reshard_after_forward=False))
register("fsdp_offload", lambda: Sharded(reshard_after_forward=True, offload=True))
