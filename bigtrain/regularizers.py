"""Keras-style weight regularizers: `Dense(64, kernel_regularizer=regularizers.l2(1e-4))`."""
from bigtrain.api.regularizers import L1, L1L2, L2, Regularizer, get, l1, l1_l2, l2, serialize

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get", "serialize"]
