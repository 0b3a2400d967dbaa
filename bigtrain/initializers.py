"""Keras-style weight initializers: `Dense(64, kernel_initializer=initializers.HeNormal())`."""
from bigtrain.api.initializers import (Constant, GlorotNormal, GlorotUniform, HeNormal,
                                       HeUniform, Identity, Initializer, LecunNormal,
                                       LecunUniform, Ones, Orthogonal, RandomNormal,
                                       RandomUniform, TruncatedNormal, VarianceScaling, Zeros,
                                       get, serialize)

__all__ = ["Initializer", "Constant", "Zeros", "Ones", "RandomNormal", "RandomUniform",
           "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal", "HeNormal",
           "HeUniform", "LecunNormal", "LecunUniform", "Orthogonal", "Identity", "get",
           "serialize"]
