"""Keras's weight initializers (`keras.initializers`), drawing from torch's generator.

An initializer makes a tensor in Keras's layout of the weight (Dense kernel (in, out),
Conv2D kernel (kh, kw, in, out), Embedding (vocab, dim)); the layer turns it into its torch
layout. Fans are Keras's: the last two axes are (in, out), the axes before them the
receptive field, so the distributions are Keras's (the random streams are not).

Example:
    Dense(64, kernel_initializer="he_normal")
    Dense(64, kernel_initializer=initializers.RandomNormal(stddev=0.02))
"""
from __future__ import annotations

import math

import torch

from bigtrain.api.keras_objects import KerasObject, lookup, serialize  # noqa: F401

_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def compute_fans(shape: tuple) -> tuple[int, int]:
    """Keras's (fan_in, fan_out) of a weight shape: (in, out), or (*receptive, in, out)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated(shape, mean: float, stddev: float) -> torch.Tensor:
    """Normal samples redrawn outside mean +- 2 stddev (Keras's truncated_normal)."""
    t = torch.empty(shape)
    torch.nn.init.trunc_normal_(t, mean, stddev, mean - 2 * stddev, mean + 2 * stddev)
    return t


class Initializer(KerasObject):
    """Base class: `init(shape, fans=None)` gives a float32 tensor of `shape` (Keras layout);
    `fans` overrides `compute_fans(shape)` where a layer's kernel contracts other axes
    (MultiHeadAttention)."""

    def __call__(self, shape, fans: tuple[int, int] | None = None) -> torch.Tensor:
        raise NotImplementedError

class Constant(Initializer):
    def __init__(self, value: float = 0.0):
        self.value = float(value)

    def __call__(self, shape, fans=None):
        return torch.full(tuple(shape), self.value)

    def get_config(self):
        return {"value": self.value}


class Zeros(Constant):
    def __init__(self):
        super().__init__(0.0)

    def get_config(self):
        return {}


class Ones(Constant):
    def __init__(self):
        super().__init__(1.0)

    def get_config(self):
        return {}


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed=None):
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def __call__(self, shape, fans=None):
        return torch.randn(tuple(shape)) * self.stddev + self.mean

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class TruncatedNormal(RandomNormal):
    def __call__(self, shape, fans=None):
        return _truncated(tuple(shape), self.mean, self.stddev)


class RandomUniform(Initializer):
    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed=None):
        self.minval, self.maxval, self.seed = float(minval), float(maxval), seed

    def __call__(self, shape, fans=None):
        return torch.empty(tuple(shape)).uniform_(self.minval, self.maxval)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class VarianceScaling(Initializer):
    """Keras's VarianceScaling: variance scale / n, n the fan of `mode`."""

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale: float = 1.0, mode: str = "fan_in",
                 distribution: str = "truncated_normal", seed=None):
        distribution = {"normal": "truncated_normal"}.get(str(distribution).lower(),
                                                          str(distribution).lower())
        if mode not in self.MODES or distribution not in self.DISTRIBUTIONS or scale <= 0:
            raise ValueError(f"VarianceScaling needs scale > 0, mode in {self.MODES} and "
                             f"distribution in {self.DISTRIBUTIONS}; got scale={scale!r}, "
                             f"mode={mode!r}, distribution={distribution!r}")
        self.scale, self.mode, self.distribution, self.seed = float(scale), mode, distribution, seed

    def __call__(self, shape, fans=None):
        fan_in, fan_out = fans or compute_fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return _truncated(tuple(shape), 0.0, math.sqrt(scale) / _TRUNCATED_STD)
        if self.distribution == "untruncated_normal":
            return torch.randn(tuple(shape)) * math.sqrt(scale)
        limit = math.sqrt(3.0 * scale)
        return torch.empty(tuple(shape)).uniform_(-limit, limit)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed}


def _scaling(name: str, scale: float, mode: str, distribution: str):
    """A VarianceScaling preset (GlorotUniform, HeNormal, ...) as a class of its own."""
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}
    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config,
                                           "__doc__": f"VarianceScaling({scale}, {mode!r}, "
                                                      f"{distribution!r})"})


GlorotUniform = _scaling("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _scaling("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeNormal = _scaling("HeNormal", 2.0, "fan_in", "truncated_normal")
HeUniform = _scaling("HeUniform", 2.0, "fan_in", "uniform")
LecunNormal = _scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _scaling("LecunUniform", 1.0, "fan_in", "uniform")


class Orthogonal(Initializer):
    """An orthogonal matrix (rows = all axes but the last), times `gain`, as Keras."""

    def __init__(self, gain: float = 1.0, seed=None):
        self.gain, self.seed = float(gain), seed

    def __call__(self, shape, fans=None):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal needs a weight of rank >= 2, got shape {tuple(shape)}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = torch.randn(max(rows, cols), min(rows, cols))
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r))
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(tuple(shape))

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class Identity(Initializer):
    """`gain` times the identity matrix (2-D weights only, as Keras)."""

    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)

    def __call__(self, shape, fans=None):
        if len(shape) != 2:
            raise ValueError(f"Identity is for 2-D weights (e.g. a Dense kernel), got shape "
                             f"{tuple(shape)}")
        return self.gain * torch.eye(*shape)

    def get_config(self):
        return {"gain": self.gain}


_CLASSES = [Constant, Zeros, Ones, RandomNormal, TruncatedNormal, RandomUniform,
            VarianceScaling, GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal,
            LecunUniform, Orthogonal, Identity]
_BY_NAME = {c.__name__.lower(): c for c in _CLASSES}
_BY_NAME.update({"glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
                 "he_normal": HeNormal, "he_uniform": HeUniform, "lecun_normal": LecunNormal,
                 "lecun_uniform": LecunUniform, "random_normal": RandomNormal,
                 "random_uniform": RandomUniform, "truncated_normal": TruncatedNormal,
                 "variance_scaling": VarianceScaling, "normal": RandomNormal,
                 "uniform": RandomUniform, "zero": Zeros, "one": Ones,
                 "orthogonalinitializer": Orthogonal, "identityinitializer": Identity})


def get(identifier) -> Initializer:
    """An Initializer from a Keras name ("he_normal"), a class, an instance or a config
    dict ({"class_name": "RandomNormal", "config": {"stddev": 0.02}}).

    Example:
        get("glorot_uniform"); get(RandomNormal(stddev=0.02))
    """
    return lookup(identifier, Initializer, _BY_NAME, "initializer", "give a Keras name "
                  "(glorot_uniform, he_normal, zeros, orthogonal, ...), a "
                  "bigtrain.initializers object or its config dict")


@torch.no_grad()
def fill_(param: torch.Tensor, init: Initializer, to_torch=None,
          fans: tuple[int, int] | None = None, keras_shape: tuple | None = None) -> None:
    """Set `param` to `init`'s values drawn in Keras's layout.

    Args:
        param: the torch weight.
        init: the initializer.
        to_torch: Keras layout -> torch layout (e.g. a transpose); None: same layout.
        fans: (fan_in, fan_out) where they are not Keras's rule for the Keras shape.
        keras_shape: the weight's Keras shape; None: `param`'s own shape.
    """
    value = init(tuple(keras_shape or param.shape), fans)
    param.copy_(value if to_torch is None else to_torch(value))
