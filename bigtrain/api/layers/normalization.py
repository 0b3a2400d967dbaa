"""Normalization layers with Keras's arguments and weight layouts: LayerNormalization,
BatchNormalization and GroupNormalization (epsilon 1e-3 as in Keras)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.weight_options import WeightOptions


def _same(t):
    return t


def _fmt(shape) -> str:
    return "(None, " + ", ".join(map(str, shape)) + ")"


def as_float(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """An integer input (Input(dtype="int32")) in the dtype of `module`'s weights (float32
    without any), as Keras casts a layer's inputs to its compute dtype; torch's kernels
    refuse integers, or mixed dtypes."""
    if x.is_floating_point():
        return x
    weight = next(module.parameters(), None)
    return x.to(torch.get_default_dtype() if weight is None else weight.dtype)


class LayerNormalization(Layer):
    """`keras.layers.LayerNormalization` over the last axis, or the last few
    (`axis=[-2, -1]`: gamma and beta then have their shape, as in Keras).

    center=False / scale=False drop beta / gamma (from the weights too, as Keras).
    rms_scaling=True is Keras's x * rsqrt(var(x) + epsilon) * gamma (no centering, no beta).
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, axis=-1, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 rms_scaling: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.axis, self.epsilon, self.rms_scaling = axis, epsilon, bool(rms_scaling)
        # Keras: rms_scaling keeps gamma and drops beta
        self.center, self.scale = bool(center) and not rms_scaling, bool(scale) or rms_scaling
        self.weight_options = {
            "gamma": WeightOptions("ones", gamma_initializer, gamma_regularizer,
                                   gamma_constraint),
            "beta": WeightOptions("zeros", beta_initializer, beta_regularizer, beta_constraint)}

    def _normalized_shape(self, input_shape) -> tuple:
        """The sizes of the axes normalized over: `axis` (counted with the batch axis, an
        int or a list) must name the last axes, e.g. -1, or [-2, -1] / [1, 2] of (None, T, F)."""
        rank = len(input_shape)
        given = list(self.axis) if isinstance(self.axis, (list, tuple)) else [self.axis]
        full = [a + rank + 1 if a < 0 else a for a in sorted(given)]  # sorted as Keras does
        if not given or full != list(range(rank + 1 - len(full), rank + 1)):
            raise ValueError(f"LayerNormalization {self.name!r}: axis={self.axis} is not "
                             "supported; bigtrain normalizes over the last axes of inputs "
                             f"of shape {_fmt(input_shape)}, named all from the end (-1, or "
                             "e.g. [-2, -1]) or all from the start; Permute the axes to "
                             "normalize to the end first")
        return tuple(input_shape[a - 1] for a in full)

    def build(self, input_shape):
        shape = self._normalized_shape(input_shape)
        self.norm = nn.LayerNorm(shape, eps=self.epsilon,
                                 elementwise_affine=self.scale or self.center,
                                 bias=self.center)
        if self.scale:
            self.weight_options["gamma"].init_(self.norm.weight)
        elif self.center:
            self.norm.weight = None  # no gamma: torch's kernel multiplies by 1
        if self.center:
            self.weight_options["beta"].init_(self.norm.bias)

    def call(self, x):
        x = as_float(x, self)
        if not self.rms_scaling:
            return self.norm(x)
        dims = tuple(range(-len(self.norm.normalized_shape), 0))
        var = x.var(dims, unbiased=False, keepdim=True)  # Keras's: centred variance
        return x * torch.rsqrt(var + self.epsilon) * self.norm.weight

    def weight_roles(self):
        return {**({"gamma": "norm.weight"} if self.scale else {}),
                **({"beta": "norm.bias"} if self.center else {})}

    def keras_weights(self):  # gamma (if scale), beta (if center)
        return [(key, _same, _same) for key in self.weight_roles().values()]

    def get_config(self):
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {"name": self.name, "axis": axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale, "rms_scaling": self.rms_scaling,
                **self.weight_options_config()}


class _KerasBatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d whose training forward moves the statistics as Keras does (biased
    batch variance). The update runs in this module's own forward, so a sharded strategy
    (FSDP2) gathers the weights it reads.

    torch's kernel computes the batch's mean and variance once, for the output and for the
    statistics alike: it writes them into two scratch buffers (momentum 1 replaces their
    contents), and the unbiased variance there is scaled back to Keras's biased one. A
    second pass over the batch (torch.var_mean over the batch axis) cost more than the
    normalization itself on CPU. As in Keras, a batch of one sample trains (its variance is
    0), where torch's own check refuses it.
    """

    def forward(self, x, keep=None, frozen=False):
        if frozen:  # a frozen layer in training: the moving statistics, left unchanged
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        if not self.training:
            return super().forward(x)
        if keep is not None:
            return self._masked_forward(x, keep)
        mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
        out = torch.batch_norm(x, self.weight, self.bias, mean, var, True, 1.0, self.eps,
                               torch.backends.cudnn.enabled)
        self._move_statistics(mean, var, x.shape[0])
        return out

    def _masked_forward(self, x, keep):
        """Keras's training step on (N, C) rows of which the (N,) bool `keep` marks the
        unmasked time steps: mean and biased variance over those rows only (Keras adds its
        epsilon 1e-7 to their count), every row normalized with them."""
        kept = keep[:, None]  # (N, 1)
        count = kept.to(x.dtype).sum() + 1e-7
        mean = torch.where(kept, x, 0).sum(0) / count  # (C,)
        var = torch.where(kept, x - mean, 0).square().sum(0) / count
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        with torch.no_grad():
            keep_old = 1.0 - self.momentum
            self.running_mean.mul_(keep_old).add_(mean.detach(), alpha=self.momentum)
            self.running_var.mul_(keep_old).add_(var.detach(), alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        return out

    @torch.no_grad()
    def _move_statistics(self, mean: torch.Tensor, unbiased_var: torch.Tensor, n: int) -> None:
        """Keras's moving mean and variance update from a batch of `n` rows with these
        statistics (torch's momentum is 1 - Keras's)."""
        if n == 0:  # an empty share or micro-batch: nothing to average
            return
        keep = 1.0 - self.momentum
        # out of place: the kernel saved its scratch buffers for the backward
        var = unbiased_var * ((n - 1) / n) if n > 1 else torch.zeros_like(unbiased_var)
        self.running_mean.mul_(keep).add_(mean, alpha=self.momentum)
        self.running_var.mul_(keep).add_(var, alpha=self.momentum)
        self.num_batches_tracked.add_(1)


class BatchNormalization(Layer):
    """`keras.layers.BatchNormalization` with one statistic per entry of `axis` (counted
    with the batch axis: -1, the channels-last default, or 1 for channels-first inputs).

    Training normalizes with the batch's statistics (torch's kernel, so outputs and gradients
    are torch's) and moves the moving statistics as Keras does:
    moving = momentum * moving + (1 - momentum) * batch, with the batch's biased variance
    (torch's running_var takes the unbiased one, n / (n - 1) larger). Inference uses the
    moving statistics. The weights are an nn.BatchNorm1d's (gamma, beta, moving mean and
    variance, as Keras orders them).
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, axis=-1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 synchronized: bool = False, renorm: bool = False, renorm_clipping=None,
                 renorm_momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        if synchronized:
            raise ValueError("BatchNormalization(synchronized=True) is not supported: bigtrain "
                             "computes the statistics on each rank's share of the batch (on "
                             "one process the flag changes nothing; drop it)")
        if renorm or renorm_clipping is not None:
            raise ValueError(f"BatchNormalization {self.name!r}: renorm=True (batch "
                             "renormalization) is not supported; drop renorm and "
                             "renorm_clipping")
        del renorm_momentum  # read by renorm only
        # regularizers and constraints only: the initializers are the constants below
        self.weight_options = {
            "gamma": WeightOptions("ones", None, gamma_regularizer, gamma_constraint),
            "beta": WeightOptions("zeros", None, beta_regularizer, beta_constraint)}
        self.axis, self.momentum, self.epsilon = axis, momentum, epsilon
        self.center, self.scale = bool(center), bool(scale)
        self.initializers = {k: _constant_init(f"BatchNormalization {k}", v) for k, v in (
            ("beta_initializer", beta_initializer), ("gamma_initializer", gamma_initializer),
            ("moving_mean_initializer", moving_mean_initializer),
            ("moving_variance_initializer", moving_variance_initializer))}

    def build(self, input_shape):
        rank = len(input_shape)
        axis = self.axis + rank + 1 if isinstance(self.axis, int) and self.axis < 0 else self.axis
        if not isinstance(axis, int) or not 1 <= axis <= rank:
            raise ValueError(f"BatchNormalization {self.name!r}: axis={self.axis} is not a "
                             f"feature axis of inputs of shape {_fmt(input_shape)} (one int, "
                             "counted with the batch axis: -1 for channels-last, 1 for "
                             "channels-first)")
        self._axis = axis - rank - 1  # from the end: the layer also runs on other ranks
        norm = _KerasBatchNorm(input_shape[axis - 1], eps=self.epsilon,
                               momentum=1.0 - self.momentum)
        with torch.no_grad():
            for key, t in (("gamma_initializer", norm.weight), ("beta_initializer", norm.bias),
                           ("moving_mean_initializer", norm.running_mean),
                           ("moving_variance_initializer", norm.running_var)):
                t.fill_(self.initializers[key])
        if not self.scale:
            norm.weight = None  # no gamma: torch's kernel multiplies by 1
        if not self.center:
            norm.bias = None
        self.norm = norm

    def keras_weights(self):  # gamma (if scale), beta (if center), moving mean and variance
        kept = ["weight"] * self.scale + ["bias"] * self.center
        return [(f"norm.{k}", _same, _same) for k in (*kept, "running_mean", "running_var")]

    def weight_roles(self):
        return {**({"gamma": "norm.weight"} if self.scale else {}),
                **({"beta": "norm.bias"} if self.center else {})}

    #: in training, Keras's statistics leave out the masked time steps (Embedding(mask_zero=
    #: True), Masking); the mask passes on unchanged
    takes_mask = True

    def _kept_rows(self, x, mask) -> torch.Tensor:
        """The (N,) bool rows of the flattened (N, C) input that a (B, T) mask keeps."""
        if self._axis != -1 or tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"BatchNormalization {self.name!r} got a time-step mask of shape "
                             f"{tuple(mask.shape)} for inputs of shape {tuple(x.shape)} with "
                             f"axis={self.axis}; Keras's masked statistics need the mask to "
                             "cover every axis but the last, the normalized one (axis=-1)")
        return mask.reshape(-1).bool()

    def call(self, x, mask=None):
        mask = getattr(x, "_keras_mask", None) if mask is None else mask
        x = as_float(x, self)
        last = self._axis == -1
        h = x if last else x.movedim(self._axis, -1)  # channels last
        shape = h.shape  # statistics over all axes but channels: (N, C)
        flat = h.reshape(-1, shape[-1])
        if self.training and not self.trainable:  # frozen: the moving statistics (Keras)
            # inside the norm's own forward, where a sharded strategy (FSDP2) gathers them
            out = self.norm(flat, frozen=True)
        elif mask is not None and self.training:
            out = self.norm(flat, self._kept_rows(x, mask))
        else:
            out = self.norm(flat)
        out = out.reshape(shape)
        return out if last else out.movedim(-1, self._axis)

    def get_config(self):
        return {"name": self.name, "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                **{k: {0.0: "zeros", 1.0: "ones"}.get(v, v)
                   for k, v in self.initializers.items()},
                **{k: v for k, v in self.weight_options_config().items()
                   if not k.endswith("_initializer")}}


def _constant_init(what: str, value) -> float:
    """The constant of a "zeros"/"ones" initializer name (or a number)."""
    names = {"zeros": 0.0, "ones": 1.0}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.lower() in names:
        return names[value.lower()]
    raise ValueError(f"{what} must be 'zeros', 'ones' or a number, got {value!r}")


class GroupNormalization(Layer):
    """`keras.layers.GroupNormalization(groups=32, axis=-1)`: the channels of `axis` split
    into `groups` runs of equal size; each sample is normalized per group over that group's
    channels and every other axis (groups=-1: one group per channel, instance
    normalization; groups=1: layer normalization over everything). Keras weights: gamma
    and beta, one per channel.

    Example:
        h = GroupNormalization(groups=8)(Conv2D(32, 3)(Input(shape=(28, 28, 1))))
    """

    supports_masking = True  # passes a time-step mask on, as Keras

    def __init__(self, groups: int = 32, axis: int = -1, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(groups, int) or (groups <= 0 and groups != -1):
            raise ValueError(f"GroupNormalization {self.name!r}: groups must be a positive "
                             f"integer, or -1 for one group per channel; got {groups!r}")
        self.groups, self.axis, self.epsilon = groups, int(axis), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.weight_options = {
            "gamma": WeightOptions("ones", gamma_initializer, gamma_regularizer,
                                   gamma_constraint),
            "beta": WeightOptions("zeros", beta_initializer, beta_regularizer, beta_constraint)}

    def build(self, input_shape):
        rank = len(input_shape)
        axis = self.axis + rank + 1 if self.axis < 0 else self.axis
        if not 1 <= axis <= rank:
            raise ValueError(f"GroupNormalization {self.name!r}: axis={self.axis} is not a "
                             f"channel axis of inputs of shape {_fmt(input_shape)}")
        channels = input_shape[axis - 1]
        groups = channels if self.groups == -1 else self.groups
        if channels % groups:
            raise ValueError(f"GroupNormalization {self.name!r}: groups={groups} must divide "
                             f"the {channels} channels of axis {self.axis}")
        self._axis, self._groups = axis - rank - 1, groups  # axis from the end
        if self.scale:
            self.gamma = nn.Parameter(torch.ones(channels))
            self.weight_options["gamma"].init_(self.gamma)
        if self.center:
            self.beta = nn.Parameter(torch.zeros(channels))
            self.weight_options["beta"].init_(self.beta)

    def call(self, x):
        h = as_float(x, self).movedim(self._axis, 1)  # (B, C, ...): torch's groups: channels
        if self.scale and self.center:
            out = F.group_norm(h, self._groups, self.gamma, self.beta, self.epsilon)
        else:  # torch's backward fails given a bias without a weight: apply them here
            out = F.group_norm(h, self._groups, None, None, self.epsilon)
            per_channel = (-1, *[1] * (h.dim() - 2))  # (C, 1, ...)
            if self.scale:
                out = out * self.gamma.view(per_channel)
            if self.center:
                out = out + self.beta.view(per_channel)
        return out.movedim(1, self._axis)

    def weight_roles(self):
        return {**({"gamma": "gamma"} if self.scale else {}),
                **({"beta": "beta"} if self.center else {})}

    def keras_weights(self):  # gamma (if scale), beta (if center)
        return [(key, _same, _same) for key in self.weight_roles().values()]

    def get_config(self):
        return {"name": self.name, "groups": self.groups, "axis": self.axis,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                **self.weight_options_config()}
