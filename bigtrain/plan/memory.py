"""Bytes per rank: model states (parameters, gradients, optimizer state), activations, buffers.

Model-state accounting follows the ZeRO paper (Rajbhandari et al., 2020, section 3.1 and
figure 1). With Psi parameters, P/G bytes per parameter and gradient and K bytes of optimizer
state per parameter (which, in mixed precision, includes the fp32 master weights):

    strategy      params     grads      optimizer   (bytes per rank, n ranks)
    ddp           P*Psi      G*Psi      K*Psi
    zero1         P*Psi      G*Psi      K*Psi/n    (at least K * the largest tensor)
    zero2         P*Psi/n    G*Psi/n    K*Psi/n    (FSDP2, see below; the paper's: P*Psi)
    zero3         P*Psi/n    G*Psi/n    K*Psi/n
    fsdp_offload  0          0          0          (all of zero3's shard lives in host memory)
    pipeline      P*Psi      G*Psi/p    K*Psi/p    (p stages; every rank keeps the whole
                                                    model; the planner uses the heaviest
                                                    stage, bigtrain.plan.stages)
    tensor        P*Psi/n    G*Psi/n    K*Psi/n    (every weight matrix split n ways)
    ps            worker: P*Psi + G*Psi; server: P*Psi + K*Psi (see `ps_server_bytes`)

bigtrain's zero2 is FSDP2 with reshard_after_forward=False, not the paper's ZeRO-2: after
backward FSDP2 frees the gathered parameters and keeps only its 1/n shard, so between steps
(at rest) zero2 holds what zero3 holds (measured: 8 bytes per parameter for fp32 Adam on 2
ranks, both). It differs at the peak: from forward to backward it keeps every unit's gathered
parameters (P*Psi, counted by the planner as a communication buffer), where zero3 keeps one
or two units. Keeping full parameters at rest, as the paper's ZeRO-2, would need a second,
stale copy after each optimizer step, so FSDP2 does not offer it.

Mixed precision ("bf16-mixed", "16-mixed") counts 2-byte working weights and gradients and a
4-byte fp32 master copy inside K, like the paper: Adam gives K = 4 + 4 + 4 = 12 and 16 bytes
per parameter in all. torch.autocast with fp32 weights also costs 4 + 4 + 8 = 16 bytes per
parameter; only the split between the columns differs.

Example:
    >>> b = model_state_bytes("zero3", 7.5e9, world_size=64, precision="bf16-mixed",
    ...                       optimizer="adam")
    >>> round(b.model_states / 1e9, 1)
    1.9
"""
from __future__ import annotations

import math
from dataclasses import dataclass

STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3", "fsdp_offload", "pipeline",
              "tensor", "ps")


@dataclass(frozen=True)
class Precision:
    """Bytes per element for one training precision.

    Attributes:
        name: "32", "bf16-mixed" or "16-mixed".
        param_bytes: working copy of each parameter.
        grad_bytes: each gradient element.
        master_bytes: fp32 master copy kept by the optimizer (0 when the weights are fp32).
        activation_bytes: each saved activation element.
    """
    name: str
    param_bytes: int
    grad_bytes: int
    master_bytes: int
    activation_bytes: int


PRECISIONS = {
    "32": Precision("32", 4, 4, 0, 4),
    "bf16-mixed": Precision("bf16-mixed", 2, 2, 4, 2),
    "16-mixed": Precision("16-mixed", 2, 2, 4, 2),
}

#: fp32 optimizer state bytes per parameter (without master weights).
OPTIMIZER_STATE_BYTES = {
    "adam": 8, "adamw": 8,            # exp_avg + exp_avg_sq
    "sgd": 0,                         # plain SGD (Keras default: momentum=0)
    "sgd_momentum": 4, "momentum": 4, "nesterov": 4,   # momentum buffer
    "rmsprop": 4, "adagrad": 4, "lion": 4,
    "adadelta": 8, "adamax": 8, "nadam": 8, "radam": 8,
    "ftrl": 8, "lamb": 8,             # accumulator + linear; exp_avg + exp_avg_sq
}


def measured_state_bytes(make_optimizer) -> int:
    """Optimizer state bytes per parameter of an optimizer the table does not name (a torch
    optimizer class given to compile: Rprop, ASGD, ...), read off one step on a probe of
    64 elements: its per-element state tensors, in bytes per element.

    Args:
        make_optimizer: builds the optimizer over a list of parameters.

    Example:
        measured_state_bytes(lambda ps: torch.optim.Rprop(ps))   # 8: prev + step_size
    """
    import torch  # only here: the rest of this module is arithmetic on sizes
    probe = torch.nn.Parameter(torch.zeros(64))
    optimizer = make_optimizer([probe])
    probe.grad = torch.full_like(probe, 0.1)
    optimizer.step()
    state = [v for st in optimizer.state.values() for v in st.values()
             if isinstance(v, torch.Tensor) and v.numel() == probe.numel()]
    return sum(v.element_size() for v in state)


def get_precision(precision: str) -> Precision:
    """Look up a precision by name; raises ValueError listing the known ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def optimizer_bytes(optimizer: str | int, precision: str) -> int:
    """K: optimizer bytes per parameter, including the master copy in mixed precision.

    Args:
        optimizer: a name from OPTIMIZER_STATE_BYTES, or the state bytes per parameter.
        precision: training precision name.

    Example:
        >>> optimizer_bytes("adam", "bf16-mixed")
        12
    """
    if isinstance(optimizer, int):
        state = optimizer
    else:
        key = optimizer.lower()
        if key not in OPTIMIZER_STATE_BYTES:
            raise ValueError(f"unknown optimizer {optimizer!r}; use one of "
                             f"{sorted(OPTIMIZER_STATE_BYTES)} or pass its state bytes per "
                             "parameter as an int")
        state = OPTIMIZER_STATE_BYTES[key]
    return state + get_precision(precision).master_bytes


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes one rank needs (the heaviest rank for asymmetric strategies).

    Attributes:
        params: parameter bytes on the device.
        grads: gradient bytes on the device.
        optimizer: optimizer-state bytes on the device (incl. fp32 master weights).
        activations: peak saved activations of the micro-batches alive at once.
        comm_buffers: flat buckets / gathered parameters the collectives need (and a
            pipeline stage's gradient accumulation copy, bigtrain.plan.stages).
        offloaded_host: bytes this rank keeps in host memory instead (not on the device).
        role: which rank this describes when ranks differ (e.g. "server"), else "".
    """
    params: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    comm_buffers: float = 0.0
    offloaded_host: float = 0.0
    role: str = ""

    @property
    def model_states(self) -> float:
        """Parameters + gradients + optimizer state on the device (the ZeRO paper's figure)."""
        return self.params + self.grads + self.optimizer

    @property
    def device_total(self) -> float:
        """Everything that must fit in the device memory."""
        return self.model_states + self.activations + self.comm_buffers


def _states(strategy: str, psi: float, n: int, p: float, g: float, k: float,
            largest: float = 0.0) -> tuple[float, float, float, float, str]:
    """(params, grads, optimizer, offloaded host bytes, role) for one rank."""
    if strategy in ("single", "ddp"):
        return p * psi, g * psi, k * psi, 0.0, ""
    if strategy == "zero1":  # ZeroRedundancyOptimizer hands out whole parameters
        return p * psi, g * psi, k * max(psi / n, largest), 0.0, ""
    if strategy == "pipeline":  # each rank keeps the model it built (bigtrain.plan.stages)
        return p * psi, g * psi / n, k * psi / n, 0.0, ""
    if strategy in ("zero2", "zero3", "tensor"):  # zero2: FSDP2 (docstring)
        return p * psi / n, g * psi / n, k * psi / n, 0.0, ""
    if strategy == "fsdp_offload":
        return 0.0, 0.0, 0.0, (p + g + k) * psi / n, ""
    if strategy == "ps":  # a worker: the (single) server holds the optimizer state
        return p * psi, g * psi, 0.0, 0.0, "worker"
    raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")


def model_state_bytes(strategy: str, n_params: float, *, world_size: int,
                      precision: str = "32", optimizer: str | int = "adam",
                      largest_param: float = 0.0) -> MemoryBreakdown:
    """Parameter, gradient and optimizer bytes per rank (no activations or buffers).

    Args:
        strategy: one of STRATEGIES.
        n_params: number of parameters (Psi).
        world_size: ranks sharing the model (stages for "pipeline", servers+workers for "ps").
        precision: "32", "bf16-mixed" or "16-mixed".
        optimizer: optimizer name or its state bytes per parameter.
        largest_param: elements of the biggest parameter tensor: zero1 shards whole tensors,
            so its heaviest rank holds at least that one's optimizer state (a 1000 x 64
            first layer of a 65 k-parameter MLP puts almost all of it on one rank).

    Example:
        >>> model_state_bytes("ddp", 1e6, world_size=2).model_states
        16000000.0
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    prec = get_precision(precision)
    k = optimizer_bytes(optimizer, precision)
    p, g, o, host, role = _states(strategy, float(n_params), world_size, prec.param_bytes,
                                  prec.grad_bytes, k, float(largest_param))
    return MemoryBreakdown(params=p, grads=g, optimizer=o, offloaded_host=host, role=role)


def ps_server_bytes(n_params: float, *, precision: str = "32",
                    optimizer: str | int = "adam") -> MemoryBreakdown:
    """The parameter server's rank: the full parameters and optimizer state, no gradients.

    Args:
        n_params: number of parameters.
        precision: training precision name.
        optimizer: optimizer name or its state bytes per parameter.
    """
    prec = get_precision(precision)
    return MemoryBreakdown(params=prec.param_bytes * float(n_params),
                           optimizer=optimizer_bytes(optimizer, precision) * float(n_params),
                           role="server")


def data_parallel_degree(strategy: str, world_size: int) -> int:
    """How many ranks split the batch (1 for pipeline/tensor, n-1 workers for ps)."""
    if strategy in ("pipeline", "tensor", "single"):
        return 1
    if strategy == "ps":
        return max(world_size - 1, 1)
    return world_size


def activation_bytes(strategy: str, per_sample: float, *, world_size: int, batch_size: int,
                     microbatches: int, schedule: str = "1f1b",
                     linear_share: float = 0.5) -> float:
    """Peak saved-activation bytes on one rank.

    Data-parallel strategies keep one micro-batch of their batch share alive. A pipeline stage
    holds 1/p of the model's activations for every micro-batch in flight: all m for GPipe,
    min(m, p) for 1F1B. Tensor parallelism splits the outputs of linear layers n ways
    (Megatron's column/row pairs) and replicates the rest.

    Args:
        strategy: strategy name.
        per_sample: saved activation bytes of one sample through the whole model.
        world_size: ranks.
        batch_size: global batch (samples per optimizer step).
        microbatches: micro-batches per step per rank (gradient accumulation or pipeline).
        schedule: "1f1b" or "gpipe" (pipeline only).
        linear_share: fraction of activation bytes that are linear-layer outputs (tensor only).
    """
    dp = data_parallel_degree(strategy, world_size)
    local = math.ceil(batch_size / dp)
    micro = math.ceil(local / microbatches)
    if strategy == "pipeline":
        p = world_size
        in_flight = microbatches if schedule == "gpipe" else min(microbatches, p)
        return per_sample * micro * in_flight / p
    if strategy == "tensor":
        return per_sample * micro * (linear_share / world_size + (1.0 - linear_share))
    return per_sample * micro  # ps: workers only; the server holds no activations
