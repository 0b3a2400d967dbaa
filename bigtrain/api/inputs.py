"""The data of a fit, evaluate or predict call as the engine takes it: arrays, Datasets and
DataLoaders (their own order), streams, files and validation data, checked and cast to
the model's inputs (bigtrain.api.training calls these).

Example:
    data = prepare_data(model, x, y)          # an ArrayData, DatasetData or StreamData
    val, config = validation_of(model, (x_val, y_val), config)
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from bigtrain.api import keyed_outputs, validation as check
from bigtrain.api.call_inputs import weights_of
from bigtrain.api.fit_args import class_weight_to_sample_weight
from bigtrain.api.functional import GraphModule
from bigtrain.api.losses import LossSpec
from bigtrain.data.hf import from_hf, is_hf
from bigtrain.data.streams import as_batches, as_stream, read_all
from bigtrain.engine.data import (ArrayData, DatasetData, InputSpec, Loading, LoaderOrder,
                                  as_tensor_source, keeps_double)
from bigtrain.engine.feed import StreamData, stream_data
from bigtrain.engine.task import FitConfig

DEFAULT_BATCH_SIZE = 32  # as Keras


def _from_dataset(x, y, loading: dict | None = None, inputs: list | None = None,
                  outputs: list | None = None):
    """A torch Dataset / DataLoader as DatasetData (its batch size is returned too). A
    DataLoader's sampler and drop_last decide which samples each pass trains on, in which
    order (`loader_order`); `inputs`: the model's InputSpecs (engine.data); `outputs`: its
    output names (a dict y's keys)."""
    from torch.utils.data import DataLoader
    if y is not None:
        raise ValueError("pass either a Dataset/DataLoader yielding (x, y), or arrays x and y, "
                         "not both")
    loader_batch = loader_batch_size(x)
    dataset = x.dataset if isinstance(x, DataLoader) else x
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError("fit takes map-style Datasets (with __len__ and __getitem__); wrap an "
                         "iterable dataset's samples in arrays or a map-style Dataset")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty (0 samples); pass at least one sample")
    order = loader_order(x) if isinstance(x, DataLoader) else None
    return DatasetData(dataset, loading_of(x, loading), order, inputs, outputs), loader_batch


def _refuse_sample_weight(x, sample_weight, what: str) -> None:
    """A Dataset, DataLoader or stream brings its own weights (as in Keras, which refuses
    sample_weight= with them): a separate array would have no rows to line up with, and
    leaving it out would train unweighted without a word."""
    if sample_weight is None:
        return
    raise ValueError(f"sample_weight cannot be given with {what} as a {type(x).__name__} (a "
                     "Dataset, DataLoader, generator or other stream): its rows could not be "
                     "matched to the weights. Let its items or batches carry the weights, "
                     "as (x, y, sample_weight), as Keras requires")


def loader_batch_size(x) -> int | None:
    """A DataLoader's batch size (also one given as batch_sampler=BatchSampler(...)), or
    None."""
    from torch.utils.data import BatchSampler, DataLoader
    if not isinstance(x, DataLoader):
        return None
    if x.batch_size is None and type(x.batch_sampler) is BatchSampler:
        return x.batch_sampler.batch_size
    return x.batch_size


def fit_batch_size(x, batch_size: int | None) -> int | None:
    """fit's batch size for data `x`: a DataLoader's own where it batches (as Keras, which
    iterates the loader and leaves fit's batch_size aside; a different one given is
    ignored, with a warning), else `batch_size` as given."""
    own = loader_batch_size(x)
    if own is None:
        return batch_size
    if batch_size is not None and batch_size != own:
        warnings.warn(f"fit got batch_size={batch_size}, but x is a DataLoader of batches of "
                      f"{own}: its batches are trained on, as in Keras, and batch_size is "
                      f"ignored. To train on batches of {batch_size}, give the DataLoader "
                      f"batch_size={batch_size} (or pass its Dataset)", UserWarning,
                      stacklevel=4)
    return own


def loader_order(loader) -> LoaderOrder:
    """The order a DataLoader over a map-style Dataset gives its samples, as fit follows it
    (Keras iterates the loader): a SequentialSampler in order, a RandomSampler (without
    replacement, every sample) a seeded permutation per pass, any other sampler its own
    indices, drawn each pass; drop_last honoured. (A custom batch_sampler is read as a
    stream of batches: `bigtrain.data.streams.as_stream`.)"""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
    sampler, drop_last, size = loader.sampler, loader.drop_last, loader.batch_size
    if type(loader.batch_sampler) is BatchSampler:  # also batch_sampler=BatchSampler(...)
        batches = loader.batch_sampler
        sampler, drop_last, size = batches.sampler, batches.drop_last, batches.batch_size
    if type(sampler) is SequentialSampler:
        return LoaderOrder(shuffle=False, drop_last=drop_last, batch_size=size)
    if type(sampler) is RandomSampler and not sampler.replacement and \
            sampler._num_samples is None:
        return LoaderOrder(shuffle=True, drop_last=drop_last, batch_size=size)
    return LoaderOrder(sampler=sampler, drop_last=drop_last, batch_size=size)


def _check_file_shape(stream, specs: list | InputSpec | None) -> None:
    """Files' x against the model's one Input, before any rank starts (other streams are
    checked batch by batch, as they are read)."""
    from bigtrain.data.files import FileSource
    if not isinstance(stream, FileSource) or not isinstance(specs, list):  # plain module
        return
    shape = stream.sample_shape()
    if len(specs) != 1:
        raise ValueError(f"the model takes {len(specs)} inputs "
                         f"({', '.join(s.name for s in specs)}), but files(...) gives one x; "
                         "use a model of one Input")
    want = specs[0].shape
    if shape is not None and want is not None and shape != want:
        raise ValueError(f"input {specs[0].name!r} expects samples of shape {want}, but "
                         f"files(..., x={stream.x if len(stream.x) > 1 else stream.x[0]!r}) "
                         f"gives samples of shape {shape}; pick the x column(s) that make "
                         "the model's input, or change Input(shape=...)")


def input_specs(model) -> list | InputSpec | None:
    """Per model input, the InputSpec (name, dtype, shape) every batch is made to meet; for
    a plain torch module, None when its weights are float32 (float64 inputs become float32,
    nothing else changes), else one InputSpec whose `floats` every float input takes (a
    module made `.double()` is fed float64, not float32: "mat1 and mat2 must have the same
    dtype").

    A float Input takes the weights' float dtype, as model(x) does (call_inputs): Keras's
    layers cast a float input to their compute dtype, so Input(dtype="float64") (or
    "float16", "bfloat16") feeds a float32 model float32, where the batch in the Input's
    own dtype stopped at the first layer ("mat1 and mat2 must have the same dtype")."""
    floats = weights_of(model.net)[1]
    if not isinstance(model.net, GraphModule):
        return None if floats == torch.float32 else InputSpec(floats=floats)
    return [InputSpec(name, floats if t.dtype.is_floating_point else t.dtype,
                      None if None in t.shape else tuple(t.shape))
            for name, t in zip(model.net.input_names, model.net.input_tensors)]


def _sized(shapes: list[tuple], arrays: list) -> list[tuple]:
    """Each declared shape with its None (any size) axes taken from the array that fills
    it, so that only the fixed axes are checked: Input(shape=(None, 8)) takes (n, T, 8)."""
    out = []
    for shape, a in zip(shapes, arrays):
        given = tuple(getattr(a, "shape", ()))[1:]
        out.append(tuple(g if s is None else s for s, g in zip(shape, given + shape[len(given):])))
    return out


def _unused_loading(x, stream, asked: dict | None) -> None:
    """Warn when fit's workers=/prefetch= were given for data they do not load: they start
    processes that load a map-style Dataset's items, and arrays (sliced in the step) or a
    stream (read in order, by its own iterator or DataLoader) have none. Keras's fit has
    no such arguments; its PyDataset(workers=...) is the stream's own, as here."""
    given = sorted(k for k, v in (asked or {}).items()
                   if v is not None and not (k == "workers" and v == 0))  # 0: none asked
    if not given:
        return
    kind = "arrays" if stream is None else f"a {type(x).__name__} read in order"
    warnings.warn(f"fit ignores {' and '.join(f'{k}=' for k in given)} here: they load the "
                  f"items of a map-style Dataset or DataLoader in background processes, and "
                  f"x is {kind}. Leave them out (a generator or a DataLoader over an "
                  "IterableDataset loads ahead in its own workers)", UserWarning, stacklevel=5)


def loading_of(x, asked: dict | None) -> Loading:
    """fit's workers=/prefetch= where given, else a DataLoader's own num_workers,
    prefetch_factor, pin_memory and collate_fn (bigtrain draws the indices itself)."""
    from torch.utils.data import DataLoader, default_collate
    asked = {k: v for k, v in (asked or {}).items() if v is not None}
    if not isinstance(x, DataLoader):
        return Loading(**asked)
    own = {"workers": x.num_workers, "prefetch": x.prefetch_factor or 2,
           "pin_memory": x.pin_memory,
           "collate": None if x.collate_fn is default_collate else x.collate_fn}
    return Loading(**{**own, **asked})


def prepare_data(model, x, y, sample_weight=None, need_targets=True,
                 loading: dict | None = None, trusted: list | None = None,
                 names: tuple[str, str] = ("x", "y")) -> ArrayData:
    """Inputs/targets as ArrayData after every check that can fail before training.
    `trusted`: see validation.check_finite (fit's training arrays only); `names`: what the
    messages call the inputs and targets (validation data's are not x and y)."""
    from torch.utils.data import DataLoader, Dataset
    if is_hf(x):  # Hugging Face datasets: y names the target column(s)
        x, y = from_hf(x, y, getattr(model.net, "input_names", None)), None
    specs = input_specs(model)
    in_names = model.net.input_names if isinstance(model.net, GraphModule) else None
    keyed = in_names is None and keyed_outputs.output_names(model) is not None
    outputs = model.output_names if in_names or keyed else None  # what a dict y is keyed by
    stream = as_stream(x)  # generators, IterableDatasets, files: read in order
    if stream is None and y is None:  # a list of batches, a PyDataset-like sequence
        stream = as_batches(x)
    if stream is not None or isinstance(x, (Dataset, DataLoader)):
        _refuse_sample_weight(x, sample_weight, names[0])
    if isinstance(x, (Dataset, DataLoader)) and stream is None:
        return _from_dataset(x, y, loading, specs, outputs)[0]
    _unused_loading(x, stream, loading)
    if stream is not None:
        _check_file_shape(stream, specs)
        return stream_data(stream, y, specs, outputs)
    xs = check.as_list(x, in_names, "x", extra_ok=True)
    # a dict output's keys without a loss may have targets too: they are left out
    ys = check.as_list(y, model.output_names if in_names or keyed else None, "y", extra_ok=keyed)
    if need_targets and not ys:
        raise ValueError("fit/evaluate need targets: pass y")
    sample_weight = per_output_weights(sample_weight, model.output_names)
    check.check_lengths(xs, ys, sample_weight)
    if model.input_shapes is not None:
        check.check_input_shapes(xs, _sized(model.input_shapes, xs), in_names)
    check.check_numeric(xs, "x")
    check.check_numeric(ys, "y")
    check.check_finite(xs, names[0], trusted)
    check.check_finite(ys, names[1], trusted)
    if model.compiled is not None and model.output_shapes is not None:
        for yi, spec, shape, name in zip(ys, model.compiled.losses,
                                         _sized(model.output_shapes, ys), model.output_names):
            if None not in shape:  # an axis of any size the labels do not fix: not checked
                check.check_targets(yi, spec.name, shape, name,
                                    ignore_class=spec.options.get("ignore_class"))
    double = keeps_double(specs)  # a float64 model: float64 data is not rounded to float32
    sw = None if sample_weight is None else as_tensor_source(sample_weight, double)
    targets = [as_tensor_source(a, double) for a in ys]
    if model.compiled is not None:
        targets = [_compact_one_hot(t, spec, model.compiled.all_metrics(i))
                   for i, (t, spec) in enumerate(zip(targets, model.compiled.losses))]
    return ArrayData([as_tensor_source(a, double) for a in xs], targets, sw, specs)


def validation_of(model, validation_data, config: FitConfig) -> tuple[ArrayData, FitConfig]:
    """fit's validation_data as data evaluate reads by index: (x, y[, sample_weight]), a
    map-style Dataset or DataLoader (every sample, in order), or a stream (generator,
    IterableDataset, PyDataset-like sequence, files, Hugging Face dataset) whose first
    `validation_steps` batches (all, without it) are read into memory once, when fit
    starts, and evaluated after every epoch; the config returned then has no
    validation_steps left. (Keras reads a re-iterable source again each time: the same
    batches. A generator it reads on, which gives the same batches only when it repeats a
    cycle of validation_steps batches.)"""
    names = ("validation x", "validation y")
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2 and \
            validation_data[1] is None:  # (source, None): the source alone, as Keras
        validation_data = validation_data[0]
    if isinstance(validation_data, (tuple, list)):
        if len(validation_data) not in (2, 3):
            raise ValueError(f"validation_data is a {type(validation_data).__name__} of "
                             f"{len(validation_data)} items; pass (x_val, y_val) or (x_val, "
                             "y_val, sample_weight), a Dataset/DataLoader, or a generator "
                             "with validation_steps")
        vsw = validation_data[2] if len(validation_data) > 2 else None
        return prepare_data(model, validation_data[0], validation_data[1], vsw,
                            names=names), config
    data = prepare_data(model, validation_data, None, names=names)
    if isinstance(data, DatasetData) and data.order is not None and \
            (data.order.sampler is not None or data.order.drop_last):
        raise ValueError("validation_data is a DataLoader whose sampler picks the samples (or "
                         "that drops the last batch); bigtrain evaluates every sample of a "
                         "validation Dataset: pass a DataLoader without sampler= and "
                         "drop_last, or the Subset to evaluate")
    if not isinstance(data, StreamData):
        return data, config
    size = config.validation_batch_size or config.batch_size
    source = data.source
    known = getattr(source, "steps", lambda _: None)(size)  # batches per pass, if known
    if config.validation_steps is None and known is None:
        source = _WarnLong(source)  # of unknown length: it may never end
    x, y, sw = read_all(source, size, config.validation_steps)
    # validation_steps is spent: the loop evaluates every sample read
    return prepare_data(model, x, y, sw, names=names), \
        dataclasses.replace(config, validation_steps=None)


class _WarnLong:
    """A validation stream of unknown length, read without validation_steps, that warns
    once it has given LONG_VALIDATION batches: an endless generator (`while True: yield`)
    would be read for ever (Keras too reads it for ever, as its docs say), and here also
    into memory. A finite stream that long is legitimate, so this warns, not raises, and
    says so before the read could end in a hang or out of memory."""

    LONG_VALIDATION = 1000

    def __init__(self, source):
        self.source = source

    def batches(self, window):
        for k, item in enumerate(self.source.batches(window), 1):
            if k == self.LONG_VALIDATION:
                warnings.warn(f"validation_data has given {k} batches and is read on: fit "
                              "reads a generator (or other stream of unknown length) given "
                              "without validation_steps to its end, into memory, once, when "
                              "fit starts; an endless one never ends. Pass validation_steps="
                              "N to evaluate its first N batches", UserWarning, stacklevel=2)
            yield item


def _compact_one_hot(y, spec: LossSpec, metric_names: list):
    """Exactly one-hot labels for a categorical cross-entropy on logits become class ids:
    the same loss and built-in metrics (which read ids and one-hot rows alike), computed by
    torch's fused kernel on 1/C of the bytes. A user's Metric object sees the labels as
    given."""
    if any(not isinstance(m, str) for m in metric_names):
        return y
    if spec.name != "categorical_crossentropy" or not spec.from_logits or \
            not isinstance(y, torch.Tensor) or y.dim() != 2 or not y.is_floating_point() \
            or y.shape[1] == 0:
        return y
    # exactly one-hot: one non-zero per row (n in all) and each row's largest value 1;
    # two passes over the labels (NaN counts as non-zero and is no row's maximum 1)
    top, ids = y.max(1)
    if int(torch.count_nonzero(y)) != y.shape[0] or not bool((top == 1).all()):
        return y  # soft labels stay as they are
    return ids


def per_output_weights(sample_weight, output_names: list[str]):
    """Keras's per-output `sample_weight` (a list, or a dict by output name) as one
    (n, outputs) float32 array, column k weighing output k (None or a missing name: 1.0);
    anything else is returned as is (one weight per sample for every output).

    Example:
        per_output_weights({"cls": w}, ["reg", "cls"])  # (n, 2): ones, w
    """
    if len(output_names) < 2 or not isinstance(sample_weight, (list, tuple, dict)):
        return sample_weight
    if isinstance(sample_weight, dict):
        unknown = [k for k in sample_weight if k not in output_names]
        if unknown:
            raise ValueError(f"sample_weight names {unknown}, which are not outputs of this "
                             f"model; its outputs are {output_names}")
        sample_weight = [sample_weight.get(name) for name in output_names]
    if len(sample_weight) != len(output_names):
        raise ValueError(f"got {len(sample_weight)} sample_weight arrays for "
                         f"{len(output_names)} outputs ({output_names}); pass one per output "
                         "(None for unweighted), a dict by output name, or one array for all")
    columns = [None if w is None else np.asarray(w, dtype=np.float32).reshape(len(w), -1)
               for w in sample_weight]
    given = [c for c in columns if c is not None]
    if not given:
        return None
    if any(c.shape[1] != 1 or c.shape[0] != given[0].shape[0] for c in given):
        raise ValueError("each output's sample_weight must be one weight per sample, all of "
                         f"the same length; got shapes {[c.shape for c in given]}")
    ones = np.ones((given[0].shape[0], 1), np.float32)
    return np.concatenate([ones if c is None else c for c in columns], axis=1)


def _with_class_weight(data, class_weight):
    """The training data with `class_weight[label]` as its sample weights (as Keras, the
    validation data keeps its own: validation_split takes its share first)."""
    import dataclasses
    if class_weight is None:
        return data
    if isinstance(data, (DatasetData, StreamData)):
        raise ValueError("class_weight needs arrays x and y (as in Keras, not a Dataset or "
                         "a stream): let the Dataset or stream return (x, y, sample_weight) "
                         "items instead")
    weights = class_weight_to_sample_weight(data.ys, class_weight, data.sample_weight)
    return dataclasses.replace(data, sample_weight=as_tensor_source(weights))
