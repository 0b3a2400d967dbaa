"""Core Keras-style layers: Dense, Activation, Dropout, Flatten, Reshape and Embedding (the
normalizations are in `normalization.py`). Each wraps a plain torch module and initialises
it as Keras does (glorot-uniform kernels, zero biases), so models port with the same
behaviour.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.activations import ACTIVATIONS, HALVES_LAST_AXIS, get_activation
from bigtrain.api.layers.base import Layer, hook_free
from bigtrain.api.layers.padding import data_format_of
from bigtrain.api.layers.weight_options import WeightOptions


_IDENTITY = ACTIVATIONS["linear"]  # Keras's "linear" (and activation=None): y as it is


def _same(t):
    return t


def _transpose(t):
    return t.T


def _activated_shape(shape: tuple, activation_name: str | None) -> tuple:
    """`shape` after the named activation ("glu" halves the last axis)."""
    if activation_name in HALVES_LAST_AXIS:
        return (*shape[:-1], shape[-1] // 2)
    return tuple(shape)


class Dense(Layer):
    """`keras.layers.Dense`: y = activation(x @ kernel + bias) on the last axis.

    The weights live in `self.linear` (an `nn.Linear`, weight shaped (units, inputs)), so
    torch's tensor-parallel plans apply unchanged; `Model.get_weights` returns the kernel
    Keras-style, shaped (inputs, units).

    Example:
        h = Dense(512, activation="relu")(Input(shape=(1000,)))
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, lora_rank=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"Dense units must be a positive integer, got {units!r}")
        if lora_rank is not None:
            raise ValueError(f"Dense {self.name!r}: lora_rank={lora_rank!r} is not supported "
                             "(bigtrain has no LoRA adapters); drop it")
        self.units = units
        self.use_bias = use_bias
        self.weight_options = {
            "kernel": WeightOptions("glorot_uniform", kernel_initializer, kernel_regularizer,
                                    kernel_constraint),
            "bias": WeightOptions("zeros", bias_initializer, bias_regularizer, bias_constraint)}
        self.activation_name, self.activation = get_activation(activation, halving_ok=True)
        if self.activation_name in HALVES_LAST_AXIS and units % 2:
            raise ValueError(f"Dense(units={units}, activation={activation!r}): "
                             f"{activation!r} halves the last axis, so units must be even")
        self._activation_arg = activation
        #: Set by compile when the loss takes logits: the final softmax/sigmoid then moves
        #: into the loss (numerically stable) and into `predict`.
        self.defer_activation = False

    def build(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError("Dense needs inputs with at least one feature axis")
        if input_shape[-1] is None:
            raise ValueError(f"Dense {self.name!r} sizes its kernel from the last axis, which "
                             "has any size (None) here; fix it in Input(shape=...), or pool "
                             "the axis of any size away first (e.g. GlobalAveragePooling1D "
                             "instead of Flatten)")
        self.linear = nn.Linear(input_shape[-1], self.units, bias=self.use_bias)
        if not self.weight_options["kernel"].init_(self.linear.weight, _transpose,
                                                   keras_shape=(input_shape[-1], self.units)):
            nn.init.xavier_uniform_(self.linear.weight)  # Keras glorot_uniform
        if self.use_bias and not self.weight_options["bias"].init_(self.linear.bias):
            nn.init.zeros_(self.linear.bias)

    def weight_roles(self):
        return {"kernel": "linear.weight", "bias": "linear.bias"} if self.use_bias else \
            {"kernel": "linear.weight"}

    def compute_output_shape(self, input_shape):
        return _activated_shape((*input_shape[:-1], self.units), self.activation_name)

    def keras_weights(self):  # kernel (inputs, units), then bias
        return [("linear.weight", _transpose, _transpose)] + (
            [("linear.bias", _same, _same)] if self.use_bias else [])

    def call(self, x):
        linear = self._modules["linear"]  # self.linear, without Module.__getattr__'s frame
        if not x.is_floating_point():  # Input(dtype="int32"): Keras's matmul promotes it
            x = x.to(linear.weight.dtype)
        params = linear._parameters  # where Linear.forward's self.weight reads them
        if (type(linear) is not nn.Linear or not hook_free(linear)  # tensor parallel, FSDP
                or "weight" not in params or "bias" not in params):  # a plain tensor attribute
            y = linear(x)
            return y if self.defer_activation else self.activation(y)
        # a plain nn.Linear without hooks: its forward, without Module.__call__'s frames
        y = F.linear(x, params["weight"], params["bias"])
        if self.defer_activation or self.activation is _IDENTITY:
            return y
        if self.activation is F.relu:  # y is this call's own (no hook saw it) and linear's
            return torch.relu_(y)      # backward does not read it: relu in place, exact
        return self.activation(y)

    def get_config(self):
        if self.activation_name is None:
            raise ValueError(f"layer {self.name!r} uses a callable activation, which cannot be "
                             "saved as JSON; use a named activation or save_weights()")
        return {"name": self.name, "units": self.units, "activation": self.activation_name,
                "use_bias": self.use_bias, **self.weight_options_config()}


class Activation(Layer):
    """`keras.layers.Activation`: applies a named activation or a callable."""

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation_name, self.activation = get_activation(activation, halving_ok=True)
        self.defer_activation = False

    def compute_output_shape(self, input_shape):
        if self.activation_name in HALVES_LAST_AXIS and input_shape[-1] % 2:
            raise ValueError(f"activation {self.activation_name!r} halves the last axis, "
                             f"which must then be even; got shape {input_shape}")
        return _activated_shape(input_shape, self.activation_name)

    def call(self, x):
        return x if self.defer_activation else self.activation(x)

    def get_config(self):
        if self.activation_name is None:
            raise ValueError(f"layer {self.name!r} uses a callable activation; cannot save as JSON")
        return {"name": self.name, "activation": self.activation_name}


class Dropout(Layer):
    """`keras.layers.Dropout(rate, noise_shape=None, seed=None)`: zeroes a fraction `rate`
    of inputs during training, scaling the rest by 1 / (1 - rate).

    `noise_shape` is the shape of the keep/drop mask, batch axis first, broadcast over the
    input: (None, 1, features) drops the same features at every time step; None takes the
    input's size. `seed` is accepted for Keras code and not used: masks come from torch's
    generator, which `bigtrain.set_seed` seeds.

    Example:
        h = Dropout(0.3, noise_shape=(None, 1, 64))(sequence)   # (B, steps, 64)
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, rate: float, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed

    def compute_output_shape(self, input_shape):
        shape = (None, *input_shape)
        ns = self.noise_shape
        if ns is not None and (len(ns) != len(shape) or any(
                n is not None and n != 1 and d is not None and n != d
                for n, d in zip(ns[1:], shape[1:]))):
            raise ValueError(f"Dropout {self.name!r} noise_shape {ns} does not broadcast over "
                             f"inputs of shape {shape}: give one entry per axis (batch "
                             "first), each None, 1 or the input's size")
        return tuple(input_shape)

    def call(self, x):
        if self.noise_shape is None:
            return F.dropout(x, self.rate, self.training)
        if not self.training or self.rate == 0.0:
            return x
        shape = [d if n is None else n for n, d in zip(self.noise_shape, x.shape)]
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)

    def get_config(self):
        return {"name": self.name, "rate": self.rate,
                "noise_shape": None if self.noise_shape is None else list(self.noise_shape),
                "seed": self.seed}


class Flatten(Layer):
    """`keras.layers.Flatten`: (B, d1, d2, ...) -> (B, d1*d2*...).

    data_format="channels_first" reads (B, C, ...) inputs and flattens them in the
    channels-last order (B, ..., C), as Keras does, so a Dense after it has the same kernel
    rows whichever layout the convolutions before it used.
    """

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format_of(self, data_format)

    def compute_output_shape(self, input_shape):
        return (None if None in input_shape else math.prod(input_shape),)  # None: any size

    def call(self, x):
        if self.data_format == "channels_first" and x.dim() > 2:
            x = x.movedim(1, -1)  # (B, C, ...) -> (B, ..., C)
        return x.flatten(1)

    def get_config(self):
        return {"name": self.name, "data_format": self.data_format}


class Reshape(Layer):
    """`keras.layers.Reshape(target_shape)`; one axis may be -1."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(target_shape)

    def compute_output_shape(self, input_shape):
        if None in input_shape:  # an axis of any size: only -1 stays open, as in Keras
            return tuple(None if s == -1 else s for s in self.target_shape)
        total, known = math.prod(input_shape), math.prod(s for s in self.target_shape if s != -1)
        shape = tuple(total // known if s == -1 else s for s in self.target_shape)
        if math.prod(shape) != total:
            raise ValueError(f"cannot reshape {input_shape} ({total} values) to {self.target_shape}")
        return shape

    def call(self, x):
        return x.reshape(x.shape[0], *self.target_shape)

    def get_config(self):
        return {"name": self.name, "target_shape": list(self.target_shape)}


class Embedding(Layer):
    """`keras.layers.Embedding(input_dim, output_dim)`: integer ids -> vectors.

    `sparse=True` makes the gradient a sparse tensor of the touched rows (parameter server).
    `mask_zero=True` marks id 0 as padding: the recurrent layers after it skip those steps
    (Keras's mask, carried on the output tensor).
    """

    def __init__(self, input_dim: int, output_dim: int, sparse: bool = False,
                 mask_zero: bool = False, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None,
                 input_length=None, weights=None, lora_rank=None, **kwargs):
        super().__init__(**kwargs)
        for arg, value, why in (("weights", weights, "set them with set_weights() after "
                                 "building the model"),
                                ("lora_rank", lora_rank, "bigtrain has no LoRA adapters")):
            if value is not None:
                raise ValueError(f"Embedding {self.name!r}: {arg}= is not supported ({why})")
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Embedding {self.name!r}: {arg} must be a positive integer, "
                                 f"got {value!r}")
        self.input_dim, self.output_dim, self.sparse = int(input_dim), int(output_dim), sparse
        self.mask_zero = self.makes_mask = bool(mask_zero)
        self.weight_options = {"embeddings": WeightOptions(
            "uniform", embeddings_initializer, embeddings_regularizer, embeddings_constraint)}
        opts = self.weight_options["embeddings"]
        if sparse and (opts.regularizer or opts.constraint):
            raise ValueError(f"Embedding {self.name!r}: embeddings_regularizer/"
                             "embeddings_constraint with sparse=True is not supported (a "
                             "sparse gradient holds only the touched rows, a penalty or "
                             "constraint reads them all); drop sparse=True or the argument")
        del input_length  # Keras 3 ignores it too (the input shape comes from Input)

    def build(self, input_shape):
        self.embedding = nn.Embedding(self.input_dim, self.output_dim, sparse=self.sparse)
        if not self.weight_options["embeddings"].init_(self.embedding.weight):
            nn.init.uniform_(self.embedding.weight, -0.05, 0.05)  # Keras default

    def weight_roles(self):
        return {"embeddings": "embedding.weight"}

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def output_dtype(self, input_dtype):
        return torch.float32

    def compute_mask(self, ids, mask=None):
        return ids != 0 if self.mask_zero else None  # (B, T) bool

    def call(self, ids):
        try:
            out = self.embedding(ids.long())
        except IndexError:  # torch's check on CPU; named here, at no cost to valid ids
            raise self._range_error(ids) from None
        if self.mask_zero:
            out._keras_mask = self.compute_mask(ids)
        return out

    def _range_error(self, ids) -> ValueError:
        ids = ids.long()
        bad = ids[(ids < 0) | (ids >= self.input_dim)]
        found = bad.flatten()[0].item() if bad.numel() else "out of range"
        return ValueError(f"Embedding {self.name!r} got id {found}, but its input_dim="
                          f"{self.input_dim} takes ids 0 to {self.input_dim - 1}; raise "
                          "input_dim above the largest id (the vocabulary size), or map the "
                          "ids into range")

    def keras_weights(self):
        return [("embedding.weight", _same, _same)]

    def get_config(self):
        return {"name": self.name, "input_dim": self.input_dim, "output_dim": self.output_dim,
                "sparse": self.sparse, "mask_zero": self.mask_zero,
                **self.weight_options_config()}
