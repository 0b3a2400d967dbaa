"""Keras-style layers as torch modules.

A `Layer` is an `nn.Module`. Called on a `KerasTensor` (from `Input`), it records a graph
node and returns a new `KerasTensor` whose shape it computed, building its weights on the
way; called on a real tensor it runs like any module. `bigtrain.api.functional` turns the
recorded graph into one `nn.Module`; the symbolic tensors and graph nodes live in
`bigtrain.api.layers.symbolic`.
"""
from __future__ import annotations

import functools
import inspect
import warnings

import torch
from torch import nn
from torch.nn.modules import module as _tm  # torch's global module hooks

from bigtrain.api import regularizers as keras_regularizers
from bigtrain.api.layers import layer_losses, subclassing
from bigtrain.api.layers.graph_place import GraphPlace
from bigtrain.api.layers.layer_weights import LayerWeights
from bigtrain.api.layers.reuse import reuse_refusal
from bigtrain.api.layers.symbolic import (  # noqa: F401 - re-exported
    KerasTensor, Node, _snake, clear_session, train_mode, unique_name, unsized_axes_named)
from bigtrain.api.layers.weight_options import WeightOptions


def _fmt(shape) -> str:
    return "(None, " + ", ".join(str(s) for s in shape) + ")"


#: the `dtype=` values under which a layer computes as bigtrain's do (float32)
_FLOAT32 = (None, "float32", torch.float32)


def _check_dtype(kind: str, dtype) -> None:
    """Keras's `dtype=` (a dtype policy): float32 is what bigtrain computes in anyway."""
    if dtype in _FLOAT32 or getattr(dtype, "name", None) == "float32":
        return
    raise ValueError(f"{kind}(dtype={dtype!r}) is not supported: bigtrain's layers compute in "
                     "float32, so the numbers would differ from Keras's; drop dtype= (or "
                     "pass 'float32'), and for mixed precision fit with "
                     "precision='bf16-mixed' or '16-mixed'")


def _constructor_keywords(cls) -> list[str]:
    """The keyword arguments `cls(...)` takes, its own first, then its base classes'."""
    names = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, Layer):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) \
                    and p.name not in names:
                names.append(p.name)
    return names


def _refuse_keywords(cls, unsupported: dict) -> None:
    """Refuse constructor arguments bigtrain's `cls` does not take, naming the layer class,
    the argument and what it does take; `cls.harmless_keywords` are accepted and ignored."""
    unknown = [k for k in unsupported if k not in cls.harmless_keywords]
    if unknown:
        raise TypeError(f"{cls.__name__}({unknown[0]}=...) is not supported: bigtrain's "
                        f"{cls.__name__} takes {', '.join(_constructor_keywords(cls))}; drop "
                        f"{unknown[0]}= (or write the layer yourself as a Layer subclass)")


@functools.cache
def _call_keywords(cls) -> tuple[str, ...] | None:
    """The keyword options `cls.call` takes after its input (None: any, it has **kwargs),
    without the time-step `mask`, which the graph hands over itself."""
    params = list(inspect.signature(cls.call).parameters.values())[2:]  # self, the input
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind != p.VAR_POSITIONAL and p.name != "mask")


def _holds_tensor(value) -> bool:
    return any(_holds_tensor(v) for v in value) if isinstance(value, (list, tuple)) else \
        isinstance(value, (KerasTensor, torch.Tensor))


class Layer(layer_losses.LayerLosses, GraphPlace, LayerWeights, nn.Module):
    """Base class of every Keras-style layer.

    bigtrain's layers implement `build(input_shape)` (create torch submodules once the input
    shape is known), `compute_output_shape(input_shape)` and `call(x)`, with shapes that
    exclude the batch axis. A user's subclass follows Keras's contract instead (shapes with
    the batch axis, `add_weight`, `call(x, training=None)`): see
    bigtrain.api.layers.subclassing. Keras's weight lists (`get_weights`, `set_weights`,
    a layer's own layout in `keras_weights`): bigtrain.api.layers.layer_weights.
    """

    #: Merge layers (Concatenate, Add) take a list of tensors.
    takes_list = False
    #: Passes a time-step mask on unchanged, as Keras's `supports_masking` (Dense, Dropout...).
    supports_masking = False
    #: Keras would use a mask here in a way bigtrain does not yet: refuse a masked input.
    refuses_mask = False
    #: Makes a time-step mask itself (Embedding(mask_zero=True), Masking).
    makes_mask = False
    #: call() takes the input's time-step mask as `mask=` (recurrent layers).
    takes_mask = False

    #: Keras constructor arguments this layer accepts and ignores because they leave its
    #: math unchanged (e.g. an RNN's `unroll`); any other unknown one is refused
    harmless_keywords: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, input_shape: tuple | None = None,
                 input_dim: int | None = None, activity_regularizer=None,
                 trainable: bool = True, dtype=None, autocast: bool = True, **unsupported):
        _refuse_keywords(type(self), unsupported)
        _check_dtype(type(self).__name__, dtype)  # autocast: a float32 layer casts nothing
        super().__init__()
        # layer(x) is inference, as Keras's, until fit (or layer.train()) sets training mode
        self.training = False
        self.__dict__["_trainable"] = bool(trainable)  # see `trainable`
        #: Keras's penalty on this layer's outputs (bigtrain.api.layers.layer_losses)
        self.activity_regularizer = keras_regularizers.get(activity_regularizer)
        #: Keras's initializer/regularizer/constraint per weight role ("kernel", "bias")
        self.weight_options: dict[str, WeightOptions] = {}
        self.name = name or unique_name(_snake(type(self).__name__))
        self.built = False
        self.input_shape_ = None  # shape(s) it was built for, without the batch axis
        if input_dim is not None:  # Keras 2: Dense(64, input_dim=20) means input_shape=(20,)
            input_shape = (input_dim,)
        if input_shape is not None:
            warnings.warn("Do not pass an `input_shape`/`input_dim` argument to a layer. When "
                          "using Sequential models, prefer using an `Input(shape)` object as "
                          "the first layer in the model instead.", UserWarning, stacklevel=3)
            input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        self.declared_input_shape = input_shape

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True,
                   autocast=True, regularizer=None, constraint=None, aggregation="none",
                   overwrite_with_gradient=False, name=None):
        """Keras's `add_weight` for a layer of your own (see bigtrain.api.layers.subclassing):
        `self.w = self.add_weight(shape=(n, 4), initializer="random_normal")` in `build`."""
        del autocast, aggregation, overwrite_with_gradient  # no effect on float32 weights
        return subclassing.add_weight(self, shape, initializer, dtype, trainable, regularizer,
                                      constraint, name)

    def __setattr__(self, name, value):
        if "_added_weights" in self.__dict__ and subclassing.is_added_buffer(self, value):
            self.register_buffer(name, value)  # a non-trainable add_weight: saved and moved
            return
        super().__setattr__(name, value)

    # ---- to implement --------------------------------------------------------------------
    def build(self, input_shape) -> None:
        """Create weights for inputs of `input_shape` (without the batch axis)."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def output_dtype(self, input_dtype):
        return input_dtype if input_dtype.is_floating_point else torch.float32

    def call(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must implement call()")

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments (used by `Model.save`)."""
        return {"name": self.name}

    # ---- machinery -----------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if subclassing.call_takes_training(type(self)) and "training" not in kwargs:
            kwargs["training"] = self.training  # a user's call(x, training=None), as Keras
        return layer_losses.run_call(self, self.call, args, kwargs)  # add_loss's bookkeeping

    @property
    def trainable(self) -> bool:
        """Keras's `layer.trainable`: False freezes this layer's weights (no gradient, no
        update) from the next step on, sublayers included; a frozen BatchNormalization
        also normalizes with its moving statistics, as in Keras."""
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, Layer):
                m.__dict__["_trainable"] = bool(value)
        for p in self.parameters():
            p.requires_grad_(bool(value))

    def _ensure_built(self, input_shape) -> None:
        if not self.built:
            keras_shape = subclassing.keras_convention(type(self), "build")
            with unsized_axes_named(self, input_shape):  # not torch's TypeError about None
                self.build(subclassing.with_batch(input_shape) if keras_shape else input_shape)
            self.train(self.training)  # torch modules made in __init__ or build: its mode
            subclassing.register_added(self)
            self.input_shape_, self.built = input_shape, True
            if not self.trainable:  # Dense(4, trainable=False): its new weights freeze
                self.trainable = False

    def output_mask(self, mask):
        """The (B, T) bool mask of this layer's output, given its input's (Keras's compute_mask)."""
        return mask if self.supports_masking else None

    def compute_mask(self, x, mask):
        """The output's (B, T) mask from this layer's input `x` and its mask (or None).

        The graph calls it outside the layer, so the mask survives wrappers (FSDP's hooks)
        that hand on new output tensors without `_keras_mask`."""
        return None if mask is None else self.output_mask(mask)

    def _carry_mask(self, x, out):
        """Keras keeps a time-step mask on the tensor (`_keras_mask`); pass it on."""
        mask = getattr(x, "_keras_mask", None)
        if mask is not None and isinstance(out, torch.Tensor) and \
                getattr(out, "_keras_mask", None) is None:
            out_mask = self.output_mask(mask)
            if out_mask is not None:
                out._keras_mask = out_mask
        return out

    def __call__(self, *args, training=None, **kwargs):
        if training is None and self.built and args and isinstance(args[0], torch.Tensor):
            return self._carry_mask(args[0], super().__call__(*args, **kwargs))  # the hot path
        if training not in (None, True, False):
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}): training= must be "
                             f"True, False or None, got {training!r}")
        first = args[0] if args else None
        symbolic = isinstance(first, KerasTensor) or (
            isinstance(first, (list, tuple)) and first and isinstance(first[0], KerasTensor))
        if symbolic:
            return self._call_symbolic(first, kwargs, training)
        with train_mode(self, training):  # Keras's eager layer(x, training=...)
            if not self.built:
                x = first
                shape = [tuple(t.shape[1:]) for t in x] if self.takes_list else tuple(x.shape[1:])
                self._ensure_built(shape)
            return self._carry_mask(first, super().__call__(*args, **kwargs))

    def _graph_keywords(self, kwargs: dict) -> dict:
        """The call options a graph node keeps, checked at graph build so that a keyword the
        layer's `call` does not take fails here, naming the layer, not later in fit."""
        kind = f"layer {self.name!r} ({type(self).__name__})"
        takes = _call_keywords(type(self))
        kept = {}
        for key, value in kwargs.items():
            if key == "mask" and value is None:
                continue
            if key == "mask":
                raise ValueError(f"{kind} was called with mask=<tensor>, which bigtrain does "
                                 "not take: it passes a time-step mask from Embedding("
                                 "mask_zero=True) or Masking to the layers after them; make the "
                                 "mask that way")
            if takes is not None and key not in takes:
                raise TypeError(f"{kind} was called with {key}=..., which bigtrain's "
                                f"{type(self).__name__} does not take (its call takes "
                                f"{', '.join(['training', *takes])}); drop {key}=")
            if _holds_tensor(value):
                raise ValueError(f"{kind}: {key}= got a tensor; bigtrain's graphs take "
                                 "tensors only as a layer's inputs")
            kept[key] = value
        return kept

    def _call_symbolic(self, inputs, kwargs: dict | None = None, training: bool | None = None):
        kwargs = self._graph_keywords(kwargs or {})
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not self.takes_list and len(tensors) != 1:
            raise ValueError(f"layer {self.name!r} takes one input, got {len(tensors)}")
        shape = [t.shape for t in tensors] if self.takes_list else tensors[0].shape
        sources = ", ".join(f"layer {t.node.layer.name!r} with output shape {_fmt(t.shape)}"
                            for t in tensors)
        why = self.built and self.input_shape_ != shape and \
            reuse_refusal(self, tensors, self.input_shape_, kwargs)  # shared: other lengths
        if why:
            built = [_fmt(s) for s in self.input_shape_] if self.takes_list else _fmt(self.input_shape_)
            raise ValueError(f"cannot connect {sources} to layer {self.name!r} "
                             f"({type(self).__name__}), which was built for inputs of "
                             f"shape {built}: {why}")
        masked = any(t.masked for t in tensors)
        if masked and self.refuses_mask:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) gets a time-step mask "
                             f"from {sources}, which Keras applies here and bigtrain does not "
                             "yet: drop mask_zero/Masking before it, or consume it first (RNNs)")
        try:
            self._ensure_built(shape)
            out_shape = self._output_shape(shape, tensors[0].dtype)
        except (ValueError, TypeError) as e:  # TypeError: None (any size) where a size is needed
            raise ValueError(f"cannot connect {sources} to layer {self.name!r} "
                             f"({type(self).__name__}): {e}") from None
        node = Node(self, tensors, self.takes_list, kwargs)
        node.training = training
        self.record_node(node)  # Keras's layer.output and layer.input (GraphPlace)
        shapes = out_shape if isinstance(out_shape, list) else [out_shape]  # return_state: many
        out_masked = self.makes_mask or (masked and self.output_mask(  # a merge: one per input
            [t.masked or None for t in tensors] if self.takes_list else True) is not None)
        for i, s in enumerate(shapes):
            node.outputs.append(KerasTensor(s, self.output_dtype(tensors[0].dtype), node, i,
                                            masked=i == 0 and out_masked))
        return node.outputs if isinstance(out_shape, list) else node.outputs[0]

    def _output_shape(self, shape, dtype):
        """compute_output_shape's answer; for a layer of the user's, Keras's: with the batch
        axis, or found by running call when the class does not define it."""
        cls = type(self)
        if subclassing.infers_output_shape(cls):
            return subclassing.run_for_shape(self, shape, dtype)
        if subclassing.keras_convention(cls, "compute_output_shape"):
            return subclassing.without_batch(
                self.compute_output_shape(subclassing.with_batch(shape)))
        return self.compute_output_shape(shape)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def hook_free(module: nn.Module) -> bool:
    """Whether `module(x)` comes to exactly `module.forward(x)`: no hooks of its own or
    torch's global ones, not compiled, `forward` not replaced on the instance, no JIT trace
    running (what torch's Module.__call__ checks before its own fast path). A caller on the
    step's path may then call `forward` (or, for a Layer, `call`) without __call__'s frames."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or module._compiled_call_impl is not None
                or "forward" in module.__dict__ or _tm._global_forward_hooks
                or _tm._global_forward_pre_hooks or _tm._global_backward_hooks
                or _tm._global_backward_pre_hooks or torch._C._get_tracing_state())


@functools.cache
def runs_direct(cls: type) -> bool:
    """Whether a graph may run a hook-free, built layer of class `cls` as `layer.call(x)`,
    skipping `Layer.__call__`, torch's `Module.__call__`, `forward` and `run_call`: a class
    of bigtrain's own (a user's call may read `training` or set masks), with Layer's
    `__call__` and `forward`, that makes no mask and takes one input. The graph checks the
    rest per call (hooks, a mask on the input, an activity regularizer), so the result is
    exactly that of `layer(x)`."""
    return (cls.__module__.startswith("bigtrain.") and issubclass(cls, Layer)
            and cls.__call__ is Layer.__call__ and cls.forward is Layer.forward
            and not cls.makes_mask and not cls.takes_list and not cls.takes_mask
            and not subclassing.call_takes_training(cls))


def weight_rules_of(net: nn.Module) -> keras_regularizers.WeightRules:
    """The regularized and constrained weights of every layer in `net` (for fit)."""
    return keras_regularizers.WeightRules(
        [(layer, *slot) for layer in net.modules() if isinstance(layer, Layer)
         for slot in layer.constrained_weights()])
