"""Keras-style optimizers: `bigtrain.optimizers.Adam(learning_rate=1e-3)`, and Keras's
learning-rate schedules as `bigtrain.optimizers.schedules` (`from
bigtrain.optimizers.schedules import CosineDecay` works too)."""
import sys

from bigtrain.api import schedules
from bigtrain.api.optimizers import (SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Ftrl, Lamb,
                                     Lion, Nadam, OptimizerSpec, RMSprop,
                                     get_optimizer as get)

sys.modules[__name__ + ".schedules"] = schedules  # the submodule path Keras code imports

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam",
           "Lion", "Ftrl", "Lamb", "OptimizerSpec", "get", "schedules"]
