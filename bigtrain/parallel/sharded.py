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

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from bigtrain.parallel.base import Strategy, register
from bigtrain.parallel.data_parallel import check_batch_covers_ranks
from bigtrain.parallel.parallelize import parallelize

_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def shard_units(module: nn.Module) -> list[nn.Module]:
    """Submodules that directly own parameters, deepest first (each becomes an FSDP unit).

    Modules that share a parameter (a GPT's embedding tied to its output head) are left to
    the root's unit: FSDP needs a tied weight to live in one group. Scalar parameters are
    not sharded (`scalar_params`), so a module owning only those is no unit."""
    units = [m for m in module.modules()
             if m is not module and any(p.dim() for p in m.parameters(recurse=False))]
    owners: dict[int, list[nn.Module]] = {}
    for m in units:
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(m)
    tied = {id(m) for ms in owners.values() if len(ms) > 1 for m in ms}
    return [m for m in units if id(m) not in tied][::-1]


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
        for unit in shard_units(module):
            fully_shard(unit, **kwargs)
        fully_shard(module, **kwargs)
        return module

    def sync_grads(self, module, optimizer, batch, ctx) -> None:
        if self._replicated:  # FSDP reduced the sharded grads inside backward
            ctx.mark("scalar parameter gradient all-reduce", phase="comm")
            average_grads(self._replicated)

    def setup_optimizer(self, module, make_optimizer):
        # fused kernels take plain tensors; sharded parameters are DTensors
        return make_optimizer(list(module.parameters()))

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
