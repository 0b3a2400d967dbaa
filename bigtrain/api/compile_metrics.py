"""compile's `metrics` and `weighted_metrics`, as Keras's CompileMetrics reads them: per
output, the metrics of one run under Keras's names, and the order of the list evaluate and
the *_on_batch calls return.

A weighted metric counts each sample with its weight (fit's and evaluate's
`sample_weight`, fit's `class_weight`); the engine's tally feeds it the batch's weights
(`Metric.weighted`). Every metric's state is a tensor of sums, so ranks add them up.

Example:
    per_output = compiled_metrics(["accuracy"], ["output"])          # [["accuracy"]]
    weighted = compiled_metrics(["accuracy"], ["output"], weighted=True)
    fresh_metrics(compiled, ["output"], losses)   # [[accuracy, weighted_accuracy]]
"""
from __future__ import annotations

import inspect

from bigtrain.api.metrics import OutputLoss, fresh_metric, get_metric


#: the loss reductions under which Keras's loss scales a masked output's sample weights by
#: B*T / (steps kept), in place, so that its weighted metrics read them so scaled
#: (`apply_mask` in keras/src/losses/loss.py); under "sum" the weights stay as given
MASK_SCALING_REDUCTIONS = ("sum_over_batch_size", "mean")


def metrics_per_output(metrics, output_names: list[str]) -> list[list]:
    """compile's `metrics` per output, in Keras's forms: a dict by output name (a name or
    a list each), a list of lists (one per output), or one list for every output."""
    def as_list(ms):
        return [] if ms is None else [ms] if isinstance(ms, str) or \
            not isinstance(ms, (list, tuple)) else list(ms)
    if metrics is None:
        return [[] for _ in output_names]
    if isinstance(metrics, dict):
        return [as_list(metrics.get(name)) for name in output_names]
    items = as_list(metrics)
    if items and all(m is None or isinstance(m, (list, tuple)) for m in items):
        if len(items) != len(output_names):
            raise ValueError(f"metrics is a list of {len(items)} lists, for a model of "
                             f"{len(output_names)} outputs {output_names}: give one list per "
                             "output, a dict by output name, or one flat list for every output")
        return [as_list(m) for m in items]
    return [list(items) for _ in output_names]


def compiled_metrics(metrics, names: list[str], weighted: bool = False) -> list[list]:
    """compile's metrics (`weighted`: its weighted_metrics) per output: names as given,
    Keras objects as their bigtrain twins (no Keras object is kept or sent to the ranks).
    Unknown names, and weighted metrics whose `update` takes no sample weights, fail here,
    at compile."""
    per_output = [[m if isinstance(m, str) else get_metric(m) for m in ms]
                  for ms in metrics_per_output(metrics, names)]
    for ms in per_output:
        for m in ms:
            metric = get_metric(m)
            if weighted and "sample_weight" not in inspect.signature(metric.update).parameters:
                raise ValueError(f"weighted_metrics got {type(metric).__name__}, whose update() "
                                 "takes no sample_weight: give it update(self, y_true, y_pred, "
                                 "sample_weight=None) (each sample counted with its weight), "
                                 "or pass it as metrics=")
    return per_output


def fresh_metrics(compiled, output_names: list[str], losses: list) -> list[list]:
    """Per output, metrics of its own for this run (the compiled objects are copied, never
    changed): its metrics, then its weighted metrics; in a model of several outputs an
    `OutputLoss` first (its `loss_fn` is the loss the task trains on).

    Keras's names (CompileMetrics.result), given to every output's metrics before any
    weighted one: "<output>_<metric>" with several outputs; "_1", "_2", ... after a name
    already taken; a weighted metric whose name is taken becomes "weighted_<metric>"
    ("<output>_weighted_<metric>"), then "weighted_<metric>_1", ...

    Args:
        compiled: the model's `training.Compiled`.
        output_names: the model's outputs, in order.
        losses: the task's LossSpec per output.
    """
    multi = len(output_names) > 1
    prefixes = [f"{name}_" if multi else "" for name in output_names]
    plain = [[fresh_metric(m) for m in ms] for ms in compiled.metric_names]
    weighted = [[fresh_metric(m) for m in ms] for ms in compiled.weighted_names] or \
        [[] for _ in output_names]
    taken: dict[str, int] = {}
    for prefix, ms in zip(prefixes, plain):
        for m in ms:
            m.name = _unique(prefix + m.name, taken)
    for prefix, ms in zip(prefixes, weighted):
        for m in ms:
            m.weighted = True
            if prefix + m.name in taken:
                m.name = _unique(f"{prefix}weighted_{m.name}", taken)
            else:
                m.name = prefix + m.name
                taken[m.name] = 1
    out = []
    for i, (name, loss) in enumerate(zip(output_names, losses)):
        for m in weighted[i]:  # Keras's mask scaling of the weights follows the reduction
            m.mask_scaled = getattr(loss, "reduction", None) in MASK_SCALING_REDUCTIONS
        metrics = plain[i] + weighted[i]
        if multi:  # Keras logs each output's loss: "<output>_loss"
            metrics.insert(0, OutputLoss(loss, column=i))
            metrics[0].name = f"{name}_loss"
        out.append(metrics)
    return out


def _unique(name: str, taken: dict[str, int]) -> str:
    """`name`, or Keras's `name_<k>` when it was taken k times before."""
    k = taken.get(name, 0)
    taken[name] = k + 1
    return name if k == 0 else f"{name}_{k}"


def keras_order(compiled, output_names: list[str], logs: dict[str, float]) -> list[str]:
    """The keys of `logs` in the order of the list evaluate and the *_on_batch calls return,
    Keras's (Trainer._flatten_metrics_in_order): "loss", the compiled metrics by their own
    names (metrics, then weighted_metrics; a name logged with an output's prefix or as
    "weighted_<name>" is not found so, and a name found twice is listed twice, as there),
    each output's "<output>_loss", then every other key sorted."""
    own = [m if isinstance(m, str) else m.name
           for lists in (compiled.metric_names, compiled.weighted_names)
           for ms in lists for m in ms]
    losses = [f"{name}_loss" for name in output_names] if len(output_names) > 1 else []
    names = ["loss", *own, *losses]
    return [k for k in names if k in logs] + sorted(k for k in logs if k not in names)
