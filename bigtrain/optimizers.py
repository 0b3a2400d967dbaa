"""Keras-style optimizers: `bigtrain.optimizers.Adam(learning_rate=1e-3)`."""
from bigtrain.api.optimizers import SGD, Adam, AdamW, OptimizerSpec, RMSprop, get_optimizer as get

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "OptimizerSpec", "get"]
