"""Convolution layers with Keras's arguments, defaults and weight layouts.

Inputs are channels-last, as in Keras: (B, L, C), (B, H, W, C), (B, D, H, W, C). A
`movedim(-1, 1)` turns them into the (B, C, ...) view torch's kernels take without copying:
for 2D and 3D that view *is* torch's `channels_last` memory format, so the convolution runs
in it and its output moves back to (B, ..., C) again as a view. Nothing is transposed per
batch. Weights are torch's `nn.ConvNd` modules (out, in/groups, *kernel); `get_weights`
gives Keras's (*kernel, in/groups, out).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.activations import get_activation
from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.weight_options import WeightOptions
from bigtrain.api.layers.padding import as_tuple, data_format_of, same_padding, \
    window_output
from bigtrain.parallel.layer_split import SplitsItself, copy_to_tp, gather_from_tp, local, \
    shard_param


def _to_keras_kernel(w):
    """(out, in, *k) -> (*k, in, out); a ConvTranspose weight (in, out, *k) -> (*k, out, in)."""
    n = w.dim() - 2
    return w.permute(*range(2, 2 + n), 1, 0)


def _to_torch_kernel(k):
    n = k.dim() - 2
    return k.permute(n + 1, n, *range(n))


def _same(t):
    return t


def glorot_(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Keras's glorot_uniform with the fans of Keras's kernel shape."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(w, -limit, limit)


class _Conv(Layer, SplitsItself):
    """Shared machinery of the N-d convolutions (rank = number of spatial axes)."""

    rank = 2
    transpose = False
    paddings = ("valid", "same")
    #: Keras takes strides > 1 with dilation_rate > 1 in the depthwise and separable
    #: convolutions only
    strided_dilation = False

    def __init__(self, filters: int, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, lora_rank=None, **kwargs):
        super().__init__(**kwargs)
        if lora_rank is not None:
            raise ValueError(f"{type(self).__name__} {self.name!r}: lora_rank={lora_rank!r} is "
                             "not supported (bigtrain has no LoRA adapters); drop it")
        self.weight_options = {
            "kernel": WeightOptions("glorot_uniform", kernel_initializer, kernel_regularizer,
                                    kernel_constraint),
            "bias": WeightOptions("zeros", bias_initializer, bias_regularizer, bias_constraint)}
        n = self.rank
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"{type(self).__name__} filters must be a positive integer, "
                             f"got {filters!r}")
        padding = str(padding).lower()
        if padding not in self.paddings:
            raise ValueError(f"{type(self).__name__} {self.name!r}: padding must be one of "
                             f"{', '.join(map(repr, self.paddings))}, got {padding!r}"
                             + ("; padding='causal' exists only for Conv1D"
                                if padding == "causal" else ""))
        self.filters, self.padding, self.groups = filters, padding, int(groups)
        self.kernel_size = as_tuple(kernel_size, n, "kernel_size")
        self.strides = as_tuple(strides, n, "strides")
        self.dilation_rate = as_tuple(dilation_rate, n, "dilation_rate")
        if not self.strided_dilation and max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{type(self).__name__} {self.name!r}: strides > 1 together with "
                             f"dilation_rate > 1 is not supported (as in Keras); got strides="
                             f"{self.strides} and dilation_rate={self.dilation_rate}")
        self.data_format = data_format_of(self, data_format)
        self.use_bias = use_bias
        self.activation_name, self.activation = get_activation(activation)
        self.defer_activation = False

    # ---- shapes -------------------------------------------------------------------------
    def _split(self, input_shape):
        """(spatial sizes, channels) of a per-sample input shape; checks the rank."""
        if len(input_shape) != self.rank + 1:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2} (batch, {self.rank} spatial axes, channels), got "
                             f"shape (None, {', '.join(map(str, input_shape))})")
        if self.data_format == "channels_last":
            return tuple(input_shape[:-1]), input_shape[-1]
        return tuple(input_shape[1:]), input_shape[0]

    def _join(self, spatial, channels):
        return (*spatial, channels) if self.data_format == "channels_last" else (channels, *spatial)

    def _spatial_out(self, spatial):
        return tuple(window_output(n, k, s, d, self.padding, self.name, type(self).__name__)
                     for n, k, s, d in zip(spatial, self.kernel_size, self.strides,
                                           self.dilation_rate))

    def compute_output_shape(self, input_shape):
        spatial, _ = self._split(input_shape)
        return self._join(self._spatial_out(spatial), self.filters)

    # ---- weights ------------------------------------------------------------------------
    def _check_groups(self, channels):
        if channels % self.groups or self.filters % self.groups:
            raise ValueError(f"{type(self).__name__} {self.name!r}: groups={self.groups} must "
                             f"divide both the input channels ({channels}) and filters "
                             f"({self.filters})")

    #: "same" padding with strides > 1: its cells depend on the input's size, which may
    #: change from call to call (an axis of any size, a layer shared by two inputs), so
    #: each call pads with F.pad for the size it gets
    _pad_per_call = False

    def _pads(self, spatial) -> list[tuple[int, int]]:
        """(before, after) padding cells per spatial axis, Keras's "same"/"causal"/"valid"."""
        return [same_padding(n, k, s, d) if self.padding == "same" else
                ((k - 1) * d, 0) if self.padding == "causal" else (0, 0)
                for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)]

    def _spatial_conv(self, spatial, cin, cout, groups, bias) -> nn.Module:
        """The torch convolution over the spatial axes, with Keras's padding; an uneven
        "same" padding (stride > 1) or "causal" is applied by F.pad first (`self._pad`)."""
        self._spatial_out(spatial)  # raises when the kernel does not fit
        self._pad_per_call = self.padding == "same" and max(self.strides) > 1
        pads = self._pads([1] * self.rank if self._pad_per_call else spatial)
        symmetric = all(a == b for a, b in pads) and not self._pad_per_call
        self._pad = None if symmetric else [p for a, b in reversed(pads) for p in (a, b)]
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.rank - 1]
        return conv_cls(cin, cout, self.kernel_size, self.strides,
                        padding=tuple(a for a, _ in pads) if symmetric else 0,
                        dilation=self.dilation_rate, groups=groups, bias=bias)

    def build(self, input_shape):
        spatial, channels = self._split(input_shape)
        self._check_groups(channels)
        self.conv = self._spatial_conv(spatial, channels, self.filters, self.groups, self.use_bias)
        area = math.prod(self.kernel_size)
        if not self._init_kernel("kernel", self.conv.weight, _to_torch_kernel,
                                 (*self.kernel_size, channels // self.groups, self.filters)):
            glorot_(self.conv.weight, area * channels // self.groups, area * self.filters)
        self._init_bias(self.conv)

    def _init_kernel(self, role, weight, to_torch, keras_shape) -> bool:
        """Fill `weight` with the role's given initializer drawn in the Keras shape; False
        for the layer's default (the caller's own code then runs, unchanged)."""
        return self.weight_options[role].init_(weight, to_torch, keras_shape=keras_shape)

    def _init_bias(self, conv) -> None:
        if self.use_bias and not self.weight_options["bias"].init_(conv.bias):
            nn.init.zeros_(conv.bias)

    def weight_roles(self):
        keys = dict(self.keras_weights_keys())
        return {role: keys[role] for role in self.weight_options if role in keys}

    def keras_weights_keys(self) -> list[tuple[str, str]]:
        """(Keras role, state key) of this layer's weights."""
        return [("kernel", "conv.weight")] + ([("bias", "conv.bias")] if self.use_bias else [])

    def keras_weights(self):
        slots = [("conv.weight", _to_keras_kernel, _to_torch_kernel)]
        return slots + ([("conv.bias", _same, _same)] if self.use_bias else [])

    # ---- run ----------------------------------------------------------------------------
    def call(self, x):
        if x.dim() != self.rank + 2:  # a tensor handed to the layer itself, past the graph
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank "
                             f"{self.rank + 2} (batch, {self.rank} spatial axes, channels), "
                             f"got a tensor of shape {tuple(x.shape)}")
        last = self.data_format == "channels_last"
        if last:
            x = x.movedim(-1, 1)  # (B, C, *spatial) view; channels_last memory for 2D/3D
        if self._pad_per_call:
            x = F.pad(x, [p for a, b in reversed(self._pads(x.shape[2:])) for p in (a, b)])
        elif self._pad is not None:
            x = F.pad(x, self._pad)
        y = self._run(x)
        if not self.defer_activation:
            y = self.activation(y)
        return y.movedim(1, -1) if last else y

    def _run(self, x):
        if self._tp_group is None:
            return self.conv(x)
        # tensor parallel: this rank's output channels, then all of them on every rank
        bias = None if self.conv.bias is None else local(self.conv.bias)
        y = self.conv._conv_forward(copy_to_tp(x, self._tp_group), local(self.conv.weight),
                                    bias)
        return gather_from_tp(y, 1, self._tp_group)

    # ---- tensor parallelism: output channels split (bigtrain.parallel.layer_split) -------
    _tp_group = None  # the tensor-parallel process group once tp_apply split the channels

    def tp_split(self, degree: int) -> str | None:
        if type(self)._run is not _Conv._run:
            return f"{type(self).__name__} stays whole (only plain convolutions split)"
        if self.conv.groups != 1:
            return f"grouped convolution (groups={self.conv.groups})"
        if self.conv.out_channels % degree:
            return f"{self.conv.out_channels} output channels do not divide by {degree}"
        return None

    def tp_apply(self, tp_mesh) -> None:
        shard_param(self.conv, "weight", tp_mesh, 0)  # (out, in, *kernel): out split
        if self.conv.bias is not None:
            shard_param(self.conv, "bias", tp_mesh, 0)
        self._tp_group = tp_mesh.get_group()

    def get_config(self):
        if self.activation_name is None:
            raise ValueError(f"layer {self.name!r} uses a callable activation, which cannot be "
                             "saved as JSON; use a named activation or save_weights()")
        return {"name": self.name, "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding,
                "data_format": self.data_format, "dilation_rate": list(self.dilation_rate),
                "groups": self.groups, "activation": self.activation_name,
                "use_bias": self.use_bias, **self.weight_options_config()}


class Conv1D(_Conv):
    """`keras.layers.Conv1D` on (B, steps, channels); `padding="causal"` pads only the past.

    Example:
        h = Conv1D(32, 3, padding="causal", activation="relu")(Input(shape=(100, 8)))
    """
    rank = 1
    paddings = ("valid", "same", "causal")


class Conv2D(_Conv):
    """`keras.layers.Conv2D` on (B, H, W, C); kernel (kh, kw, in/groups, filters) in Keras.

    Example:
        h = Conv2D(32, (3, 3), activation="relu")(Input(shape=(28, 28, 1)))
    """
    rank = 2


class Conv3D(_Conv):
    """`keras.layers.Conv3D` on (B, D, H, W, C)."""
    rank = 3
