"""Keras-style optimizers: `bigtrain.optimizers.Adam(learning_rate=1e-3)`."""
from bigtrain.api.optimizers import (SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Ftrl, Lamb,
                                     Lion, Nadam, OptimizerSpec, RMSprop,
                                     get_optimizer as get)

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam",
           "Lion", "Ftrl", "Lamb", "OptimizerSpec", "get"]
