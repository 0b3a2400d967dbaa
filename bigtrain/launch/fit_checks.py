"""Checks `fit` runs before any rank starts, so that what cannot train as one process does
is refused (or noted) with its fix instead of training wrong or hanging: in-place
renormalising embeddings, parametrized modules sent to Ray, param groups a strategy cannot
keep, learning-rate callbacks under a parameter server, mid-epoch checkpoints on several
ranks, BatchNorm over parts of a batch, optimizers that need a closure, sparse embedding
gradients under strategies that shard or copy them.

Example:
    check_layers(model.net, resolve_strategy("ddp"), 2)     # raises for Embedding(max_norm)
"""
from __future__ import annotations

import inspect
import warnings

import torch


def renorm_refusal(module, strat, nprocs: int) -> str | None:
    """Why `strat` on `nprocs` ranks cannot train `module`'s nn.Embedding/EmbeddingBag with
    `max_norm` as one process does, or None.

    Such a layer rescales the rows it looks up in place, inside forward. Each data-parallel
    rank sees only its share of the batch, so it rescales only those rows and the ranks'
    copies drift apart (ddp, zero1); where the forward runs on a gathered or host copy of
    the weights (zero2/zero3/fsdp_offload, ddp_cpu_optimizer, parameter servers) the write
    is lost. Exact: one process ("single"), and tensor/pipeline parallelism without
    data-parallel replicas (every rank sees the whole batch).

    Example:
        renorm_refusal(nn.Embedding(10, 4, max_norm=1.0), resolve_strategy("ddp"), 2)
        # "nn.Embedding '' has max_norm=1.0: ..."
    """
    if nprocs < 2 or strat.name == "single":
        return None
    from bigtrain.parallel.pipeline import Pipeline
    from bigtrain.parallel.tensor_parallel import TensorParallel
    if isinstance(strat, (TensorParallel, Pipeline)) and strat.dims(nprocs).dp == 1:
        return None
    found = next(((n, m) for n, m in module.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
                  and m.max_norm is not None), None)
    if found is None:
        return None
    name, layer = found
    return (f"nn.{type(layer).__name__} {name!r} has max_norm={layer.max_norm}: its forward "
            f"rescales the rows it looks up, in place. Under strategy {strat.name!r} on "
            f"{nprocs} processes that does not train as one process does: each rank sees "
            "only its share of the batch, so the ranks rescale different rows, and where "
            "the forward runs on a gathered or host copy of the weights (zero2/zero3/"
            "fsdp_offload, ddp_cpu_optimizer, parameter servers) the rescaling is lost. Train "
            "with strategy='tensor' (every rank sees the whole batch) or on one process, or "
            "drop max_norm and bound the rows after each update instead (Keras's rule: "
            "bigtrain.layers.Embedding(..., embeddings_constraint=bigtrain.constraints."
            f"MaxNorm({layer.max_norm}, axis=1)), under ddp, zero1/zero2/zero3 or tensor).")


#: strategies (module, class) whose gradient handling takes dense gradients only: zero1
#: builds its per-shard optimizers from the class and defaults (torch's fused kernel then
#: meets the sparse gradient), FSDP (zero2/zero3/fsdp, fsdp_offload) reduce-scatters flat
#: dense buffers, ddp_cpu_optimizer copies gradients into dense host tensors, ddp_balanced
#: sizes them with nbytes
_DENSE_GRAD_ONLY = (("bigtrain.parallel.zero1", "Zero1"),
                    ("bigtrain.parallel.sharded", "Sharded"),
                    ("bigtrain.parallel.cpu_optimizer", "CpuOptimizerDataParallel"),
                    ("bigtrain.parallel.balanced", "BalancedDataParallel"))


def sparse_refusal(module, strat, nprocs: int) -> str | None:
    """Why `strat` on `nprocs` ranks cannot train `module`'s nn.Embedding/EmbeddingBag with
    `sparse=True` (a trainable one), or None. ddp, the parameter servers, tensor and
    pipeline train it as one process does; the strategies of `_DENSE_GRAD_ONLY` fail
    inside torch on the sparse gradient.

    Example:
        sparse_refusal(nn.Embedding(10, 4, sparse=True), resolve_strategy("zero1"), 2)
        # "nn.Embedding '' has sparse=True: ..."
    """
    from bigtrain.parallel.lazy_types import loaded_instance
    if nprocs < 2 or not any(loaded_instance(strat, *where) for where in _DENSE_GRAD_ONLY):
        return None
    found = next(((n, m) for n, m in module.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
                  and m.sparse and m.weight.requires_grad), None)
    if found is None:
        return None
    name, layer = found
    # zero2, zero3 and fsdp_offload share one class and its name ("zero3"); describe() tells
    label = strat.describe() if loaded_instance(strat, *_DENSE_GRAD_ONLY[1]) else strat.name
    return (f"nn.{type(layer).__name__} {name!r} has sparse=True: its gradient is a sparse "
            f"tensor, which strategy {label!r} cannot handle (it shards, copies or "
            "fuses gradients as dense tensors; torch fails inside the step). Build the layer "
            "with sparse=False (the same update, with a dense gradient), or train with "
            "strategy='ddp' (also 'tensor', 'pipeline' or a parameter server 'ps'), which "
            "keep sparse gradients.")


def check_ray_payload(module) -> None:
    """Refuse, before Ray starts any worker, a module with torch.nn.utils.parametrize
    parametrizations (parametrizations.weight_norm, spectral_norm, ...): torch refuses to
    pickle those and Ray sends the task pickled. (bigtrain's own launcher, fit(devices=N)
    without cluster=, rebuilds them on each rank.)"""
    from torch.nn.utils import parametrize
    name = next((n for n, m in module.named_modules() if parametrize.is_parametrized(m)), None)
    if name is not None:
        raise ValueError(
            f"fit(cluster='ray') with a parametrized module ({name!r}, "
            "torch.nn.utils.parametrizations: weight_norm, spectral_norm, ...): torch refuses "
            "to pickle such modules, and Ray sends the model to its workers pickled. Train "
            "with fit(devices=N) without cluster= (bigtrain's launcher rebuilds them on each "
            "rank), or use the hook-based torch.nn.utils.weight_norm / spectral_norm.")


def frozen_refusal(module, strat, nprocs: int) -> str | None:
    """A model frozen whole (`trainable = False`) on several processes: one process runs
    its steps and trains nothing (Keras warns), but ranks crashed inside torch (DDP refuses
    a module without trainable parameters; the parameter server's backward met a loss
    without a graph; the end-of-fit optimizer gather met the placeholder parameter)."""
    if nprocs < 2 or any(p.requires_grad for p in module.parameters()):
        return None
    return (f"the model has no trainable weights (trainable=False on the model or on every "
            f"layer), so strategy {strat.name!r} on {nprocs} processes has nothing to "
            "train or synchronise; set trainable=True on the layers to train, or fit in "
            "one process (no strategy or devices) to run the frozen model's steps")


def layer_refusal(module, strat, nprocs: int) -> str | None:
    """Why `strat` on `nprocs` ranks cannot train one of `module`'s layers as one process
    does (`renorm_refusal`, `sparse_refusal`, `frozen_refusal`), or None;
    strategy="auto" leaves such strategies out (runner.model_refusals)."""
    return (renorm_refusal(module, strat, nprocs) or sparse_refusal(module, strat, nprocs)
            or frozen_refusal(module, strat, nprocs))


def check_layers(module, strat, nprocs: int) -> None:
    """Refuse, before any process starts, what `layer_refusal` names."""
    why = layer_refusal(module, strat, nprocs)
    if why:
        raise ValueError(why)


def _check_param_groups(strat, spec) -> None:
    """A torch optimizer instance with its own param groups (OptimizerSpec.groups) needs
    every rank's optimizer over all the model's parameters: zero1 and the parameter server
    build theirs per shard, from the class and its defaults alone."""
    if getattr(spec, "groups", None) is None:
        return  # (before the imports: zero1's pulls in torch.distributed.optim, 0.4 s)
    from bigtrain.parallel.parameter_server.strategy import ParameterServer
    from bigtrain.parallel.zero1 import Zero1
    if isinstance(strat, (Zero1, ParameterServer)):
        raise ValueError(
            f"the {spec.cls.__name__} given to compile has its own parameter groups (or "
            f"covers part of the model), which strategy {strat.name!r} cannot keep: it builds "
            "its optimizers per shard from the class and its defaults. Train on one process "
            "or with strategy='ddp', 'zero2', 'zero3' or 'tensor', or compile with the class "
            f"(optimizer=torch.optim.{spec.cls.__name__}) to give every parameter the same "
            "settings.")


def check_callbacks(strat, callbacks: list, spec=None) -> None:
    """Refuse, before any process starts, callbacks that change the learning rate where it
    cannot change: an optimizer compiled with a learning-rate schedule (`spec.schedule`; its
    step hook would overwrite every rate the callback sets, and Keras raises TypeError), or
    a parameter server (its optimizers live on the server ranks, out of the callbacks'
    reach)."""
    from bigtrain.engine.callbacks import LearningRateScheduler, ReduceLROnPlateau
    from bigtrain.parallel.lazy_types import loaded_instance
    schedule = getattr(spec, "schedule", None)
    for cb in callbacks:
        if schedule is not None and isinstance(cb, (LearningRateScheduler, ReduceLROnPlateau)):
            raise TypeError(
                f"{type(cb).__name__} changes the learning rate, but the optimizer was "
                f"compiled with a learning-rate schedule ({type(schedule).__name__}) as its "
                "learning_rate, hence its learning rate is not settable (as in Keras); drop "
                "the callback, or compile with a float learning_rate")
    if not loaded_instance(strat, "bigtrain.parallel.parameter_server.strategy",
                           "ParameterServer"):
        return
    for cb in callbacks:
        if isinstance(cb, (LearningRateScheduler, ReduceLROnPlateau)):
            raise ValueError(
                f"{type(cb).__name__} with strategy {strat.name!r}: the parameter servers "
                "hold the optimizer and its learning rate, which callbacks in the workers "
                "cannot change. Drop the callback (set the learning rate in compile), or "
                "train with a data-parallel strategy such as strategy='ddp'.")


def warn_split_batch_norm(module, strat, nprocs: int) -> None:
    """Warn, before the ranks start, that BatchNormalization normalises parts of a batch."""
    from bigtrain.parallel.lazy_types import loaded_instance
    pipe = nprocs > 1 and loaded_instance(strat, "bigtrain.parallel.pipeline", "Pipeline")
    parts = strat.dims(nprocs).dp * strat.microbatches if pipe else nprocs
    if parts < 2 or strat.name == "tensor_parallel" or not any(  # tp: whole batch a rank
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return
    part, fix = (f"each of the {parts} micro-batches (as accumulate_steps={parts})",
                 "microbatches=1 without replicas") if pipe else \
        ("each rank's share", "strategy='tensor'")
    warnings.warn(f"strategy {strat.name!r} on {nprocs} processes: BatchNormalization normalises "
                  f"over {part}, not the whole batch: the model trains close to, not exactly "
                  f"like, one process. LayerNormalization has no such difference; or use {fix}.",
                  UserWarning, stacklevel=5)


def check_optimizer_step(make_optimizer) -> None:
    """Refuse, before any process starts, an optimizer whose `step` needs a closure
    (torch.optim.LBFGS re-evaluates the loss several times per step): fit runs one forward
    and backward per batch and calls `step()` once, with no closure to give.

    Example:
        check_optimizer_step(lambda params: torch.optim.LBFGS(params))  # ValueError
    """
    probe = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    closure = inspect.signature(type(probe).step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        name = type(probe).__name__
        raise ValueError(
            f"optimizer {name} needs a closure in step(): it re-evaluates the loss several "
            "times per step. fit runs one forward and backward per batch and calls step() "
            "once, so it cannot drive it (with or without a strategy). Compile with a "
            "first-order optimizer instead (optimizer='adam', torch.optim.Adam, ...), or "
            f"train with {name} in a loop of your own that passes the closure.")


def check_split_rule(module, strat, make_optimizer) -> None:
    """Refuse, before any process starts, an update rule that `strat` would change by
    splitting tensors over its ranks (a strategy's `split_rule_refusal`: Lamb's trust ratio
    over a tensor that parameter servers split by rows)."""
    refusal = getattr(strat, "split_rule_refusal", None)
    why = refusal(module, make_optimizer) if refusal is not None else None
    if why:
        raise ValueError(why)


#: device kinds whose tensors torch's SyncBatchNorm all-reduces (its forward refuses others)
_SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")


def check_sync_batch_norm(module, strat, nprocs: int, device_kind: str) -> None:
    """Refuse, before any rank starts, nn.SyncBatchNorm on `nprocs` > 1 ranks computing on
    `device_kind` "cpu" (or "mps"): torch's SyncBatchNorm syncs its statistics on GPUs only
    and failed inside the first forward on every rank ("expected input tensor to be on
    GPU"). It is refused rather than turned into BatchNorm: that would normalise over each
    rank's share instead of the whole batch the user asked for.

    Example:
        check_sync_batch_norm(nn.SyncBatchNorm(4), resolve_strategy("ddp"), 2, "cpu")
    """
    if nprocs < 2 or device_kind in _SYNC_BN_DEVICES:
        return
    name = next((n for n, m in module.named_modules()
                 if isinstance(m, torch.nn.SyncBatchNorm)), None)
    if name is None:
        return
    raise ValueError(
        f"nn.SyncBatchNorm {name!r} under strategy {strat.name!r} on {nprocs} {device_kind} "
        "processes: torch's SyncBatchNorm averages its statistics across ranks on GPUs only "
        "(on CPU it fails inside the first forward). Build the model with nn.BatchNorm1d/2d/"
        "3d (or bigtrain.layers.BatchNormalization): data-parallel strategies normalise each "
        "rank's share of the batch with it, as Keras's multi-device training does, and "
        "strategy='tensor' normalises the whole batch; or train on GPUs (devices='cuda').")
