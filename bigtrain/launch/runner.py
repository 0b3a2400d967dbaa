"""Where a fit runs: in this process, as one rank of a job a launcher started (torchrun,
`bigtrain run`), or on new worker processes that `fit` starts itself.

After a multi-process fit started from here, this process holds the trained weights and the
History, so the code after `fit` runs once, as it would without a strategy.
"""
from __future__ import annotations

import os
import warnings

import torch

from bigtrain.diagnose.watchdog import WatchdogConfig
from bigtrain.engine.callbacks import History, ProgressBar
from bigtrain.engine.carry import (Carry, keep_final_rate, keep_final_steps, same_parameters,
                                   start_ranks_from, warn_fresh)
from bigtrain.engine.carry_state import carries, full_of_plain, load_into_plain, unpack
from bigtrain.engine.feed import input_sample
from bigtrain.engine.loop import FitResult, check_precision, run_rank
from bigtrain.engine.task import CheckpointConfig
from bigtrain.launch import join as dist_env
from bigtrain.launch.fit_checks import (_check_param_groups,  # noqa: F401
                                       check_callbacks, check_optimizer_step, check_ray_payload,
                                       check_split_rule,
                                       check_layers, check_sync_batch_norm,
                                       layer_refusal, renorm_refusal,
                                       warn_split_batch_norm)
from bigtrain.launch.precision_checks import check_dtypes
from bigtrain.launch.ray import check_cluster, cluster_defaults
from bigtrain.parallel.base import resolve_strategy
from bigtrain.parallel.lost_node import report_lost_node
from bigtrain.parallel.seeds import draw_seed


def _callbacks(user: list, verbose: int) -> list:
    # a History of the user's own is the one fit fills and returns (Keras adds none then)
    cbs = [] if any(isinstance(c, History) for c in user) else [History()]
    if verbose and not any(isinstance(c, ProgressBar) for c in user):
        cbs.append(ProgressBar(verbose=verbose))
    return cbs + user


def _finish(model, result: FitResult, history) -> object:
    if result.state_dict is not None:
        if any(hasattr(p, "to_local") for p in model.net.parameters()):
            # inside a launched job a sharded strategy changed the module in place (its
            # parameters are DTensor shards): rank 0 keeps the full weights beside it
            model.keep_full_weights(result.state_dict)
        else:
            model.net.load_state_dict(result.state_dict)
    carried = result.optimizer  # a one-process fit's own; several: rebuilt from their state
    model.keep_optimizer(carried if carried is not None
                         else _ranks_optimizer(model, result.optimizer_state))
    # several processes: the compiled spec follows on every rank of a launched job alike,
    # where rank 0 alone gets the state back
    keep_final_rate(model.compiled.optimizer, carried, result.learning_rate)
    keep_final_steps(model.compiled.optimizer, carried, result.iterations)
    # this fit's epochs after the ones a History given again already held (Keras keeps them)
    history.history = {k: list(v) for k, v in history.history.items()}
    for k, v in result.history.items():
        history.history.setdefault(k, []).extend(v)
    history.epoch = list(result.epochs)
    history.stats = dict(result.stats)
    history.stop_reason = result.stop_reason
    history.model = model
    model.history = history
    return history


def _ranks_optimizer(model, packed: bytes | None):
    """A plain optimizer over `model.net` holding the state a multi-process fit's ranks
    ended with (bigtrain.engine.carry_state), or None where they handed none back."""
    if packed is None or launched_world_size() is not None:
        return None  # a launched job: rank 0 alone has it, the next fit's ranks could not
    optimizer = model.compiled.optimizer.build(model.net.parameters())
    if not load_into_plain(optimizer, model.net, unpack(packed)):
        return None  # other parameters than the ranks trained: the next fit starts fresh
    return optimizer


def _ranks_carry(carry, strat, model, name: str):
    """What the ranks of a fit on several processes continue from: the previous fit's whole
    optimizer state, or None (a fresh `name` optimizer, said here, not in a rank's output)."""
    if carry.optimizer is None or not carries(strat):
        warn_fresh(name)
        return None
    fresh = model.compiled.optimizer.build(model.net.parameters())  # no state: cheap
    if not same_parameters(carry.optimizer, fresh):
        warnings.warn(f"this fit starts with a fresh {name} state: it trains other parameters "
                      "than the previous fit (a layer's trainable changed? Keras asks for a "
                      "new compile then)", UserWarning, stacklevel=6)
        return None
    return Carry(None, full_of_plain(carry.optimizer, model.net))


def launched_world_size() -> int | None:
    """WORLD_SIZE of the job a launcher (torchrun, `bigtrain run`) started this process in,
    or None outside one."""
    if not dist_env.launched_externally():
        return None
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launched_job(strat, devices, world: int) -> None:
    """Refuse, before any collective, a fit that a launched job of `world` ranks cannot run
    as asked: strategy "single" on several ranks (each rank would train its own copy), or
    an int `devices` that is not the job's number of processes.

    Example:
        check_launched_job(resolve_strategy("ddp"), 4, world=2)
        # ValueError: fit(devices=4) but this job has 2 processes ...
    """
    if world > 1 and strat.name == "single":
        raise ValueError(
            f"strategy='single' in a job of {world} processes (started by torchrun / "
            "`bigtrain run`): every rank would train its own copy of the model and end with "
            "different weights. Drop strategy= (a launched job then trains with 'ddp'), pass "
            "a multi-rank strategy such as strategy='ddp', or start the script with one "
            "process.")
    if isinstance(devices, bool) or not isinstance(devices, int):
        return  # None, "auto", "cpu", "cuda", "mps": the launcher decided the count
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if devices != world and not (local != world and devices == local):
        per_node = f" ({local} on this node)" if local != world else ""
        raise ValueError(
            f"fit(devices={devices}) but this job has {world} processes{per_node}, started "
            "by torchrun / `bigtrain run`: the launcher, not fit, decides how many ranks "
            f"train. Drop devices= (or pass devices={world}), or start the job with "
            f"--nproc-per-node {devices}.")


def model_refusals(module, devices: int) -> dict[str, str]:
    """Registered strategy name -> why it cannot split `module` over `devices` ranks (its
    `check_model`), for the planner's `refused`; empty on one rank.

    Example:
        plan(module, devices=8, batch_size=32, refused=model_refusals(module, 8))
    """
    from bigtrain.parallel.base import strategy_names
    if devices < 2:
        return {}
    refused = {}
    for name in strategy_names():
        strat = resolve_strategy(name)
        try:
            strat.check_model(module, devices)
        except (ValueError, TypeError) as e:
            refused[name] = str(e)
            continue
        why = layer_refusal(module, strat, devices)
        if why:
            refused[name] = why
    return refused


def task_refusals(task) -> dict[str, str]:
    """Registered strategy name -> why `task` cannot train exactly under it (e.g. weight
    regularizers under a pipeline), for the planner's `refused`."""
    from bigtrain.parallel.base import strategy_names
    if task is None:
        return {}
    reasons = {name: task.strategy_refusal(resolve_strategy(name)) for name in strategy_names()}
    return {name: why for name, why in reasons.items() if why}


def example_input(data, module):
    """The first sample of fit's array data, as the model takes it (a tensor, or a tuple
    for several inputs) with a batch dimension of 1, for the planner; None for a Dataset
    or a stream (the planner then guesses the input from the first layer)."""
    from bigtrain.engine.data import ArrayData
    if type(data) is not ArrayData or not data.xs or len(data) == 0:
        return None
    device = next(module.parameters(), torch.empty(0)).device
    inputs = data.take(torch.arange(1), device)[0]
    return tuple(inputs) if isinstance(inputs, (list, tuple)) else inputs


def choose_auto(model, devices, config, sample=None, task=None) -> str:
    """strategy="auto": the planner's first choice among the registered strategies (for
    the job's ranks when a launcher started this process), profiled on `sample` (one
    sample of the real inputs; None: guessed from the first layer)."""
    from bigtrain.parallel.base import strategy_names
    from bigtrain.parallel.tensor_plan import planned_styles
    from bigtrain.plan import plan
    n = launched_world_size() or dist_env.resolve_devices(devices) or 1
    if n == 1:
        return "single"
    device = None  # this CPU host shared by n ranks
    if devices != "cpu" and torch.cuda.is_available():  # measure the GPUs (about a second)
        from bigtrain.parallel.inventory import inventory, rank_specs
        # this host's GPUs are shared by its own ranks; every host of a job alike
        local = rank_specs(inventory(), int(os.environ.get("LOCAL_WORLD_SIZE", n)), "cuda")
        device = (local * -(-n // len(local)))[:n]
    p = plan(model.net, devices=n, batch_size=config.batch_size, precision=config.precision,
             optimizer=_planned_optimizer(model.compiled.optimizer), device=device,
             example_input=sample, tensor_styles=planned_styles(model.net, n),
             refused={**model_refusals(model.net, n), **task_refusals(task)})
    for est in p.estimates:
        if est.fits and est.strategy in strategy_names():
            if dist_env.is_main_process():
                print(f"strategy='auto' chose {est.strategy!r}: {est.reason}", flush=True)
            return est.strategy
    raise ValueError(f"strategy='auto': no strategy fits {n} devices for this model; run "
                     "bigtrain plan for the breakdown")


def _planned_optimizer(spec) -> str | int:
    """The optimizer as the planner takes it: a name its table knows, else the state bytes
    per parameter measured on a probe (a torch optimizer class given to compile, whose
    name the table lacks, stopped strategy="auto" with "unknown optimizer")."""
    from bigtrain.plan.memory import OPTIMIZER_STATE_BYTES, measured_state_bytes
    name = (spec.name or "adam").lower()
    if name in OPTIMIZER_STATE_BYTES:
        return name
    try:
        return measured_state_bytes(spec.build)
    except Exception:  # noqa: BLE001 - a step that needs a closure: fit refuses it itself
        return OPTIMIZER_STATE_BYTES["adam"]


def warn_if_slow_bf16(precision: str, device_kind: str) -> None:
    """Warn, before training starts (main process only), when bf16 is much slower than fp32
    on this CPU; the probe (bigtrain.plan.bf16) runs once per process, only for bf16 (or
    float16: "16-mixed") on CPU."""
    from bigtrain.plan import bf16
    if precision not in ("bf16-mixed", "16-mixed") or device_kind != "cpu" or \
            not dist_env.is_main_process():
        return
    probe = bf16.probe_bf16() if precision == "bf16-mixed" else bf16.probe_float16()
    message = bf16.slow_bf16_message(precision, device_kind, probe)
    if message:
        warnings.warn(message, bf16.SlowBf16Warning, stacklevel=4)


# fit keyword -> CheckpointConfig field


_CHECKPOINT_OPTIONS = {"checkpoint_dir": "directory", "checkpoint_every": "every_steps",
                       "checkpoint_at_epoch_end": "at_epoch_end", "keep_last": "keep_last",
                       "resume": "resume"}


#: fit's keywords beyond Keras's (see bigtrain.api.training.fit); anything else is refused


FIT_OPTIONS = (*_CHECKPOINT_OPTIONS, "watchdog", "watchdog_timeout", "max_restarts", "timeout",
               "cluster")


def checkpoint_config(options: dict) -> CheckpointConfig | None:
    """Take fit's checkpoint options out of `options`; a CheckpointConfig, or None when
    `checkpoint_dir` was not given."""
    given = {field: options.pop(key) for key, field in _CHECKPOINT_OPTIONS.items()
             if key in options}
    if "directory" in given:
        return CheckpointConfig(**given)
    if given:
        names = sorted(k for k, f in _CHECKPOINT_OPTIONS.items() if f in given)
        raise ValueError(f"fit got {', '.join(names)} but no checkpoint_dir; pass "
                         "checkpoint_dir='<folder>' to enable checkpoints")
    return None


def one_process_note(strat) -> str:
    """What a multi-rank strategy does when fit gets neither `devices` nor a launcher."""
    return (f"strategy={strat.name!r} runs in this one process: fit got no devices= and the "
            f"script was not started by a launcher, so there is 1 rank and nothing is split. "
            f"To train on N ranks pass devices=N (fit(..., strategy={strat.name!r}, "
            f"devices=2)) or start the script with `bigtrain run --nproc-per-node N "
            f"script.py`; pass devices=1 to run on one process on purpose.")


def run_fit(model, config, callbacks, strategy, devices, options: dict, *, make_task,
            capture=None):
    """Check fit's settings, build the TrainTask and run it where it belongs (in this process,
    as one rank of a launched job, or on `devices` ranks started here); returns the History.

    Args:
        model: the user's Model (compiled); callbacks see it, it gets the weights back.
        config: the engine's FitConfig.
        callbacks: the user's callbacks (History and a progress bar are added).
        strategy: a name, "auto", a Strategy object or None.
        devices: fit's `devices`.
        options: fit's keywords beyond Keras's (FIT_OPTIONS).
        make_task: `make_task(callbacks) -> TrainTask` from the API, which knows the data.
        capture: `capture(strategy)`, called once the options are checked (`bigtrain
            verify` stops the fit there), or None.
    """
    options = dict(options)
    checkpoint = checkpoint_config(options)  # bad settings fail before any process starts
    # "ray": the ranks run as Ray Train workers (also under `bigtrain run --ray ADDRESS`)
    cluster, devices = cluster_defaults(options.pop("cluster", None), devices)
    check_cluster(cluster)
    watchdog = WatchdogConfig.from_fit(options.pop("watchdog", True),
                                       options.pop("watchdog_timeout", None))
    if capture is not None:
        capture(strategy)
    cbs = _callbacks(callbacks, config.verbose)
    task = None
    if strategy == "auto":  # the planner profiles the model on a sample of the real data
        task = make_task(cbs)
        strategy = choose_auto(model, devices, config, example_input(task.train, model.net),
                               task)
        strategy = rank0_choice(strategy, options)
    world = launched_world_size()
    if world is not None and world > 1 and strategy is None:
        strategy = "ddp"  # as Lightning does: a launched multi-rank job trains data parallel
    strat = resolve_strategy(strategy)
    if world is not None:
        check_launched_job(strat, devices, world)  # before any collective
    check_precision(strat, config.precision)  # before any process starts
    warn_if_slow_bf16(config.precision, dist_env.device_kind(devices))
    check_dtypes(model.net, config.precision)  # a Keras policy it ignores, half weights
    check_fit(strat, model, checkpoint)
    check_callbacks(strat, callbacks, model.compiled.optimizer if model.compiled else None)
    history = [c for c in cbs if isinstance(c, History)][-1]  # the last, as Keras
    prior = {k: list(v) for k, v in history.history.items()}  # its earlier fits' epochs
    task = task or make_task(cbs)
    task.checkpoint = checkpoint
    task.watchdog = watchdog  # read by the engine's loop (hang watchdog)
    modes = [(m, m.training) for m in model.net.modules()]  # fit trains in training mode
    try:
        result = run_task(task, strat, model, devices, options, cluster)
    finally:  # and leaves each module's mode as it found it (layer(x): inference again)
        for m, was in modes:
            m.training = was
    for callback, state in zip(task.callbacks, result.callback_states or []):
        vars(callback).update(state)  # what the rank's copy ended with (EarlyStopping.best)
    history.history = prior  # _finish adds this fit's epochs, however the ranks filled it
    return _finish(model, result, history)


def rank0_choice(name: str, options: dict) -> str:
    """In a job a launcher started with several ranks, rank 0's `name` on every rank:
    "auto" plans on each rank from its own timings (GPUs), and two ranks that chose
    differently would run different strategies into each other's collectives."""
    world = launched_world_size()
    if world is None or world <= 1:
        return name
    dist_env.join_existing_job(options.get("timeout"))  # run_task reuses this group
    box = [name]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_fit(strat, model, checkpoint) -> None:
    """Refuse, before any process starts, the optimizer arguments and checkpoints `strat`
    cannot run exactly."""
    rules = model.compiled.optimizer.rules
    _check_param_groups(strat, model.compiled.optimizer)
    refusal = strat.refuse_update_rules(rules) if rules is not None else None
    if refusal:
        raise ValueError(f"the optimizer's arguments cannot run exactly under strategy "
                         f"{strat.name!r}: {refusal}")
    if checkpoint is not None and rules is not None and rules.use_ema:
        raise ValueError("fit(checkpoint_dir=...) with an optimizer's use_ema=True: the moving "
                         "average of the weights is not part of the checkpoints, so a resumed "
                         "run would average differently; drop use_ema or checkpoint_dir")
    if checkpoint is not None and strat.checkpoint_unsupported:
        raise ValueError(f"fit(checkpoint_dir=...) with strategy {strat.name!r}: "
                         f"{strat.checkpoint_unsupported}")


def run_task(task, strat, owner, devices, options: dict, cluster: str | None = None
             ) -> FitResult:
    """Run `task` in this process, as one rank of a job a launcher started, or on the ranks
    `devices` asks for (started here, or as Ray Train workers for cluster="ray"); rank 0's
    FitResult."""
    check_optimizer_step(task.make_optimizer)  # the same refusal on every path
    check_split_rule(task.module, strat, task.make_optimizer)  # e.g. Lamb over split rows
    if dist_env.launched_externally():
        check_layers(task.module, strat, launched_world_size() or 1)
        env = dist_env.join_existing_job(options.get("timeout"))
        if env.world_size > 1:  # every rank draws it from its own stream (seeded alike)
            task.rank_seed = draw_seed()
        with report_lost_node():  # one line, not a traceback, when a restart follows
            return run_rank(task, strat, owner, env)
    nprocs = strat.num_processes(dist_env.resolve_devices(devices))
    strat.validate(nprocs, task.config.batch_size)  # before any process starts
    if strat.checks_input_sample:  # the fit's first rows: a pipeline checks its cut on them
        strat.use_input_sample(input_sample(task.train, torch.device("cpu")))
    strat.check_model(task.module, nprocs)  # e.g. a model a pipeline cannot cut
    check_layers(task.module, strat, nprocs)
    warn_split_batch_norm(task.module, strat, nprocs)
    kind = dist_env.device_kind(devices)
    check_sync_batch_norm(task.module, strat, nprocs, kind)  # torch's: on GPUs only
    if task.carry is not None and (cluster is not None or nprocs > 1):
        start_ranks_from(owner.compiled.optimizer, task.carry.optimizer)  # rate, schedule step
        task.carry = _ranks_carry(task.carry, strat, owner,  # shipped to the ranks
                                  task.optimizer_name or "optimizer")
        owner.keep_optimizer(None)  # not kept alive here while they train
    if cluster is not None or nprocs > 1:  # the ranks' streams follow the caller's seed
        task.rank_seed = draw_seed()
    if cluster is not None:
        check_ray_payload(task.module)
        from bigtrain.launch.ray import launch_on_ray
        return launch_on_ray(task, strat, nprocs, model_owner=owner, devices=devices,
                             **options)
    if nprocs == 1:
        if devices is None and strat.name != "single":
            warnings.warn(one_process_note(strat), UserWarning, stacklevel=5)
        task.weights_in_place = True  # owner.net is the task's module: no copy back needed
        return run_rank(task, strat, owner, dist_env.local_env(kind))
    from bigtrain.launch.launcher import launch  # looked up per call (tests stub it)
    return launch(task, strat, nprocs, model_owner=owner, device_kind=kind, **options)
