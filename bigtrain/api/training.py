"""compile / fit / evaluate / predict: turn the user's Keras-style call into an engine
`TrainTask`, check the data first, and run it on the chosen strategy."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from bigtrain.api import validation as check
from bigtrain.api.activations import ACTIVATIONS
from bigtrain.api.architecture import build_inner_layers, build_on_data
from bigtrain.api.call_hooks import batch_outputs, hook_list
from bigtrain.api.capture import stop_if_capturing
from bigtrain.api.compile_metrics import compiled_metrics, fresh_metrics, keras_order
from bigtrain.api.fit_args import check_keywords, loss_weight_list, processes as _processes
from bigtrain.api.functional import GraphModule
from bigtrain.api.inputs import (DEFAULT_BATCH_SIZE, _with_class_weight, fit_batch_size,
                                 loader_batch_size, prepare_data, validation_of)
from bigtrain.api.keyed_outputs import ddp_strategy as keyed_ddp, hook_dict_outputs, \
    refuse_strategy as refuse_keyed, split_dict
from bigtrain.api.layers.base import weight_rules_of
from bigtrain.api.layers.layer_losses import has_activity_regularizer, may_add_losses
from bigtrain.api.losses import LOGIT_LOSSES, LossSpec, get_loss
from bigtrain.api.metric_views import fit_logs
from bigtrain.api.metrics import OutputLoss
from bigtrain.api.optimizer_decay import resolve_spec
from bigtrain.api.optimizers import OptimizerSpec, get_optimizer
from bigtrain.api.regularizers import LayerLossTask, RegularizedTask, refuse_strategy
from bigtrain.engine.data import ArrayData
from bigtrain.engine.feed import check_stream, input_sample
from bigtrain.engine.task import FitConfig, TrainTask
from bigtrain.parallel.update_rules import UpdateRules



@dataclass
class Compiled:
    """What compile() chose: optimizer factory, per-output losses and metric names."""
    optimizer: OptimizerSpec
    losses: list[LossSpec]
    loss_weights: list[float]
    metric_names: list[list[str]]
    activations: list  # per output: activation moved into the loss, or None
    #: the output layers whose activation moved into the loss: they return logits inside
    #: the engine's steps only (see `output_activations`)
    deferred: list = field(default_factory=list)
    #: a torch module's dict outputs trained by key (a KeyedOutputs hook), or None
    keyed: object = None
    #: per output, compile's `weighted_metrics` (fed the sample weights); [] for none
    weighted_names: list = field(default_factory=list)
    #: a model of dict outputs compiled with a dict of losses: the outputs in that dict's
    #: order, which Keras lists their "<key>_loss" in (evaluate's list, metrics_names)
    loss_order: list | None = None

    def all_metrics(self, i: int) -> list:
        """Output `i`'s metrics and weighted metrics, as compile was given them."""
        return [*self.metric_names[i], *(self.weighted_names[i] if self.weighted_names else [])]

    def reported(self, output_names: list[str]) -> list[str]:
        """The outputs in the order Keras reports their losses."""
        return self.loss_order or output_names


def _defer_output_activation(model, index: int, loss: LossSpec):
    """The output layer whose final softmax/sigmoid moves into the loss when the loss can
    read logits, or None. A loss the user built with from_logits=True reads the activated
    output as logits, as in Keras (with Keras's warning)."""
    if not isinstance(model.net, GraphModule) or loss.name not in LOGIT_LOSSES:
        return None
    if loss.options.get("axis", -1) != -1 and loss.name != "binary_crossentropy":
        return None  # the softmax runs over the last axis, the loss over another
    layer = model.net.output_layers[index]
    act = getattr(layer, "activation_name", None)
    if act is None or act != LOGIT_LOSSES[loss.name]:
        return None
    if loss.from_logits:
        warnings.warn(f"loss {loss.name!r} received from_logits=True, but the output of "
                      f"layer {layer.name!r} is produced by a {act} activation and thus "
                      "does not represent logits. Was this intended? (bigtrain feeds the "
                      f"{act} output to the loss as logits, as Keras does; drop "
                      f"from_logits=True, or the layer's activation, to train on logits)",
                      UserWarning, stacklevel=4)
        return None
    loss.from_logits = True
    return layer


@contextlib.contextmanager
def output_activations(model, deferred: bool):
    """Within the block, the output layers whose softmax/sigmoid compile moved into the loss
    return logits (`deferred=True`: what fit's and evaluate's steps read, the fused loss
    applying the activation) or apply it (`deferred=False`: what `model(x)` returns).

    Example:
        with output_activations(model, deferred=False):
            probabilities = model.net(x)
    """
    layers = model.compiled.deferred if model.compiled is not None else []
    keyed = [model.compiled.keyed] if model.compiled and model.compiled.keyed else []
    views = [hook.engine_view for hook in keyed]
    for hook in keyed:  # the engine reads a dict output as a tuple in key order
        hook.engine_view = deferred
    before = [layer.defer_activation for layer in layers]
    for layer in layers:
        layer.defer_activation = deferred
    try:
        yield
    finally:
        for layer, was in zip(layers, before):
            layer.defer_activation = was
        for hook, was in zip(keyed, views):
            hook.engine_view = was


def _masked_outputs(model, n_out: int) -> list[bool]:
    """Per output: it carries a time-step mask (Embedding(mask_zero=True), Masking), which
    Keras leaves out of the loss and the metrics."""
    tensors = getattr(model.net, "output_tensors", None)
    if tensors is None:
        return [False] * n_out
    return [bool(getattr(t, "masked", False)) for t in tensors]


def compile_model(model, optimizer, loss, metrics, loss_weights, learning_rate,
                  weighted_metrics=None) -> None:
    if model.net is None:
        if not model.layers:
            raise ValueError("the model has no layers yet; add layers (and an input shape) "
                             "first")
        # a Sequential of layers with no input shape: its first data builds it and then
        # compiles it so (architecture.build_on_data), as Keras's
        model.pending_compile = functools.partial(
            compile_model, model, optimizer=optimizer, loss=loss, metrics=metrics,
            loss_weights=loss_weights, learning_rate=learning_rate,
            weighted_metrics=weighted_metrics)
        return
    keyed = hook_dict_outputs(model, loss)  # a torch module's dict outputs, by key
    names = keyed.keys if keyed is not None else model.output_names
    n_out = len(names)
    for layer in model.layers:  # a second compile starts from the plain graph
        if hasattr(layer, "defer_activation"):
            layer.defer_activation = False
    if loss is None:
        raise ValueError("compile needs a loss, e.g. loss='categorical_crossentropy'")
    raw = [loss[n] for n in names] if isinstance(loss, dict) else \
        list(loss) if isinstance(loss, (list, tuple)) else [loss] * n_out
    if len(raw) != n_out:
        raise ValueError(f"got {len(raw)} losses for {n_out} outputs ({names})")
    losses = [get_loss(item) for item in raw]
    for spec, masked in zip(losses, _masked_outputs(model, n_out)):
        spec.masked = masked
    deferred = []  # a loop, not a comprehension: the warning's stacklevel counts frames
    for i, spec in enumerate(losses):
        deferred.append(_defer_output_activation(model, i, spec))
    activations = [None if layer is None else ACTIVATIONS[layer.activation_name]
                   for layer in deferred]
    per_output = compiled_metrics(metrics, names)
    weighted = compiled_metrics(weighted_metrics, names, weighted=True)
    weights = loss_weight_list(loss_weights, names)
    keyed_graph = isinstance(loss, dict) and getattr(model.net, "output_keys", None)
    order = [k for k in loss if k in names] + [n for n in names if n not in loss] \
        if keyed_graph else None
    model.compiled = Compiled(get_optimizer(optimizer, learning_rate,
                                            list(model.net.parameters())), losses, weights,
                              per_output, activations,
                              [layer for layer in deferred if layer is not None], keyed,
                              weighted if any(weighted) else [], order)


def _require_compiled(model, what: str) -> None:
    if model.compiled is None and getattr(model, "pending_compile", None) is not None:
        raise RuntimeError(f"model.{what}() needs the Sequential built first: it has no input "
                           "shape yet (it builds from arrays or tensors, or call "
                           "model.build((None, *sample_shape)))")
    if model.compiled is None:
        raise RuntimeError(f"call model.compile(optimizer=..., loss=...) before model.{what}()")


def make_task(model, data: ArrayData, val: ArrayData | None, config: FitConfig,
              callbacks: list, run_dir=None, carry=None, split: bool = False) -> TrainTask:
    """The engine's TrainTask for `model`; `carry`: what its previous fit left (fit passes
    `model.carry()`, so a second fit continues the optimizer as Keras's does); `split`: the
    run splits each batch over processes or micro-batches (the losses check themselves).

    The task's network returns logits where compile moved an activation into the loss, as
    the engine's steps expect; fit and evaluate give the plain forward back when they end."""
    c = model.compiled
    for layer in c.deferred:
        layer.defer_activation = True
    losses = [dataclasses.replace(spec, split=split) for spec in c.losses]
    metrics = fresh_metrics(c, model.output_names, losses)
    rules = weight_rules_of(model.net)  # kernel_regularizer, kernel_constraint, ...
    # the losses layers add in the forward (add_loss) join the loss, with their gradient
    task_cls, optimizer = LayerLossTask, resolve_spec(c.optimizer, model)  # decay exclusions
    extra = {"adds_losses": may_add_losses(model.net),
             "activity": has_activity_regularizer(model.net)}
    if rules:  # the penalties' value joins the loss, their gradient the optimizer's hooks
        task_cls, extra = RegularizedTask, {**extra, "weight_rules": rules}
        optimizer = dataclasses.replace(optimizer, rules=dataclasses.replace(
            optimizer.rules or UpdateRules(), weights=rules))
    return task_cls(module=model.net, losses=_task_losses(losses, metrics),
                    loss_weights=c.loss_weights, metrics=metrics, activations=c.activations,
                    make_optimizer=optimizer.build, optimizer_name=optimizer.name,
                    train=data, val=val, config=config, callbacks=callbacks, run_dir=run_dir,
                    carry=carry, **extra)


def _task_losses(losses: list, metrics: list[list]) -> list:
    """The task's loss per output: with several outputs, each output's `OutputLoss.loss_fn`
    (it picks the output's column of per-output sample weights and logs the value)."""
    if len(losses) == 1:
        return losses
    return [next(m for m in ms if isinstance(m, OutputLoss)).loss_fn for ms in metrics]


def fit(model, x=None, y=None, *, batch_size=None, epochs=1, verbose=1, callbacks=None,
        validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
        sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
        validation_batch_size=None, validation_freq=1, strategy=None, devices=None,
        accumulate_steps=1, precision="32", seed=0, run_dir=None, terminate_on_nan=True,
        workers=None, prefetch=None, **distributed):
    """Train the model, as `keras.Model.fit`, optionally split over several processes.

    Args:
        x, y: numpy arrays, torch tensors, memory-mapped `.npy` arrays, or lists/dicts of
            them for several inputs/outputs (a dict's keys that name no Input are left
            out, as Keras). Or, with y=None: a map-style torch Dataset or DataLoader; a
            generator of (x, y) batches, a list of them, a PyDataset-like sequence of them
            or a torch IterableDataset (read in order, each rank keeping its rows of every
            global batch); files from `bigtrain.data.files(...)`; a Hugging Face dataset,
            with y naming its target column(s). Inputs are cast to the dtype of the
            model's Input (float32 unless declared otherwise), as Keras casts them.
            A DataLoader's sampler and drop_last decide the samples and their order (as
            Keras iterates the loader; fit's `shuffle` is then ignored): a RandomSampler
            gives a new permutation each epoch (seeded by `seed`), a SequentialSampler
            none, another sampler its own indices (its random draws seeded by `seed` and
            the pass, so every rank draws the same). A custom batch_sampler is read batch
            by batch, on one process only.
        batch_size: the GLOBAL batch (summed over all ranks); default 32. A DataLoader
            brings its own batch size, which rules (as in Keras; a different one given
            here is ignored, with a warning).
        validation_data: (x_val, y_val[, sample_weight]), a map-style Dataset or
            DataLoader, or any of the streams above, whose first `validation_steps`
            batches (all of them without it) are read into memory once, when fit starts.
        epochs, verbose, callbacks, validation_split, shuffle, class_weight, sample_weight,
            initial_epoch, steps_per_epoch, validation_steps, validation_batch_size,
            validation_freq: as in Keras, in every strategy.
        strategy: a name ("ddp", "zero3", ...) or a `bigtrain.parallel` Strategy object.
        devices: number of processes, "auto" (one per GPU), "cuda", "cpu" (CPU ranks even
            where a GPU exists) or "mps" (one process on an Apple GPU).
        accumulate_steps: micro-batches per optimizer step.
        precision: "32", "bf16-mixed" or "16-mixed".
        seed: seeds the data order.
        run_dir: folder for the run record.
        workers: background processes that load a Dataset's items ahead of the step (default:
            a DataLoader's num_workers, else 0); prefetch: batches each worker loads ahead
            (default: a DataLoader's prefetch_factor, else 2). Arrays need neither.
        **distributed: resumable checkpoints (bigtrain.engine.checkpoint), in every mode:
            checkpoint_dir (folder; enables them), checkpoint_every (also save every N
            optimizer steps; default 0: epoch ends only), checkpoint_at_epoch_end (True),
            keep_last (3), resume ("auto": continue from the newest checkpoint in
            checkpoint_dir; "never"; or a `step-XXXXXXXX` folder). For processes that fit
            starts itself: max_restarts (restart the group after a rank dies; it resumes
            from the newest checkpoint), timeout (process-group timeout, seconds).
            Distributed runs also take watchdog (True) and watchdog_timeout (seconds a rank
            may wait in one operation before the job fails with a report naming the rank
            that is missing or behind; default 120). cluster="ray" runs the ranks as Ray
            Train workers (bigtrain.launch.ray; needs the extra bigtrain[ray]).

    Example:
        model.fit(x, y, epochs=5, strategy="zero3", devices=2, checkpoint_dir="ckpt",
                  checkpoint_every=100, max_restarts=2)

    Returns:
        A History with `.history` (Keras's keys) and `.epoch`.
    """
    from bigtrain.engine.run_profile import CallerProfile
    from bigtrain.launch.join import is_main_process
    from bigtrain.launch.runner import FIT_OPTIONS, run_fit
    check_keywords("fit", distributed, [*_FIT_KEYWORDS, *FIT_OPTIONS])
    build_on_data(model, x)
    _require_compiled(model, "fit")
    batch_size = fit_batch_size(x, batch_size)  # a DataLoader's own batch size rules
    config = FitConfig(epochs=epochs, batch_size=DEFAULT_BATCH_SIZE if batch_size is None
                       else batch_size, shuffle=shuffle, initial_epoch=initial_epoch,
                       verbose=verbose, accumulate_steps=accumulate_steps, seed=seed,
                       terminate_on_nan=terminate_on_nan, precision=precision,
                       steps_per_epoch=steps_per_epoch, validation_freq=validation_freq,
                       validation_batch_size=validation_batch_size,
                       validation_steps=validation_steps)
    # arrays an earlier fit found finite are not read again while the loss check is on (a
    # validation share's rows never reach the training loss: those arrays are always read)
    trusted = [] if terminate_on_nan and not validation_split else None
    data = prepare_data(model, x, y, sample_weight,
                        loading={"workers": workers, "prefetch": prefetch}, trusted=trusted)
    val = None
    if validation_data is not None:
        val, config = validation_of(model, validation_data, config)
    elif validation_split:
        data, val = data.split(validation_split)
    data = _with_class_weight(data, class_weight)
    # bigtrain layers inside a torch module: built before the optimizer is made
    build_inner_layers(model, lambda: input_sample(data, torch.device("cpu")))
    check.refuse_inexact_losses(model, _processes(devices), accumulate_steps)
    split = accumulate_steps > 1 or _processes(devices) > 1
    regularized, adds_losses = bool(weight_rules_of(model.net)), may_add_losses(model.net)
    if regularized or adds_losses:  # penalties, add_loss: not on pipelines/servers
        refuse_strategy(strategy, regularized, adds_losses,
                        has_activity_regularizer(model.net))
    refuse_keyed(model, strategy)
    check_stream(data, val, config)
    strategy = keyed_ddp(model, strategy, data, _processes(devices))
    # several ranks: this process adds the data profile to their record (CallerProfile)
    with output_activations(model, deferred=True), \
            CallerProfile(main=is_main_process()) as caller:
        history = run_fit(model, config, list(callbacks or []), strategy, devices, distributed,
                          make_task=lambda cbs: caller.keep(make_task(
                              model, data, val, config, cbs, run_dir, carry=model.carry(),
                              split=split)),
                          capture=lambda strat: stop_if_capturing(model, data, val, config,
                                                                  strat, devices))
    model.metric_logs = fit_logs(history, validation_freq)  # what model.metrics reads
    if trusted and history.stop_reason == "nan_loss":
        # did a trusted array change in place since an earlier fit read it?
        check.rescan(trusted, "The array changed in place after an earlier fit had checked "
                     "it, so this fit trained on it until the loss became NaN/Inf: the "
                     "model's weights and optimizer state may no longer be finite (compile "
                     "the model again and reload or rebuild its weights).")
    return history


_FIT_KEYWORDS = [name for name in fit.__code__.co_varnames[:fit.__code__.co_argcount +
                                                         fit.__code__.co_kwonlyargcount]
                 if name != "model"]


def evaluate(model, x, y, batch_size=None, sample_weight=None, return_dict=False,
             callbacks=None):
    """Keras's evaluate; `callbacks` get on_test_begin, the test-batch hooks and
    on_test_end (with the returned logs), as Keras's."""
    from bigtrain.engine.loop import evaluate as run_eval
    from bigtrain.parallel.base import Strategy
    build_on_data(model, x)
    _require_compiled(model, "evaluate")
    data = prepare_data(model, x, y, sample_weight)
    # a DataLoader's own batches rule (Keras iterates it): the last batch's mean weighs less
    batch_size = loader_batch_size(x) or batch_size or DEFAULT_BATCH_SIZE
    hooks = hook_list(model, callbacks, len(data), batch_size)
    if hooks is not None:
        hooks.on_test_begin()
    with output_activations(model, deferred=True):
        task = make_task(model, data, None, FitConfig(batch_size=batch_size), [])
        logs = run_eval(task, Strategy(), model.net, data, task.config.batch_size,
                        hooks=None if hooks is None else hooks.test_batch_hooks)
    if hooks is not None:
        hooks.on_test_end(dict(logs))
    model.metric_logs = dict(logs)  # what model.metrics reads (bigtrain.api.metric_views)
    if return_dict:
        return logs
    c = model.compiled
    values = [logs[k] for k in keras_order(c, c.reported(model.output_names), logs)]
    return values[0] if len(values) == 1 else values


def predict(model, x, batch_size=None, callbacks=None) -> np.ndarray | list[np.ndarray]:
    """Keras's predict; `callbacks` get on_predict_begin, per batch on_predict_batch_begin
    and on_predict_batch_end ({"outputs": the batch's outputs as numpy}), on_predict_end."""
    build_on_data(model, x)
    check.refuse_split_weights(model)
    data = prepare_data(model, x, None, need_targets=False)
    batch_size = loader_batch_size(x) or batch_size or DEFAULT_BATCH_SIZE  # as evaluate
    hooks = hook_list(model, callbacks, len(data), batch_size)
    if hooks is not None:
        hooks.on_predict_begin()
    outs: list[list[torch.Tensor]] = []
    keys = None  # a module's dict outputs: predict returns a dict with its keys
    was_training = model.net.training
    model.net.eval()
    first = next(model.net.parameters(), None)  # a model of weightless layers runs on the CPU
    device = first.device if first is not None else torch.device("cpu")
    # the output layers apply their activation here, also in a callback while fit runs
    with torch.no_grad(), output_activations(model, deferred=False):
        for step, start in enumerate(range(0, len(data), batch_size)):
            if hooks is not None:
                hooks.on_predict_batch_begin(step)
            xb, _, _ = data.take(torch.arange(start, min(start + batch_size, len(data))), device)
            out = model.net(*xb) if isinstance(xb, tuple) else model.net(xb)
            out, keys = split_dict(out)
            keys = keys or getattr(model.net, "output_keys", None)  # Model(x, {key: t})
            for i, o in enumerate(out):
                if len(outs) <= i:
                    outs.append([])
                # in its own dtype (ints stay ints); bf16, which numpy lacks, as float32
                outs[i].append(o.float().cpu() if o.dtype == torch.bfloat16 else o.cpu())
            if hooks is not None:
                hooks.on_predict_batch_end(step, {"outputs": batch_outputs(outs, keys)})
    model.net.train(was_training)
    if hooks is not None:
        hooks.on_predict_end()
    arrays = [torch.cat(o).numpy() for o in outs]
    if keys is not None:
        return dict(zip(keys, arrays))
    return arrays[0] if len(arrays) == 1 else arrays
