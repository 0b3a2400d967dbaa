"""Keras-style layers (`from bigtrain.layers import Dense, Input`)."""
from bigtrain.api.layers.base import Input, InputLayer, KerasTensor, Layer
from bigtrain.api.layers.core import (Activation, BatchNormalization, Dense, Dropout, Embedding,
                                      Flatten, LayerNormalization, Reshape)
from bigtrain.api.layers.merge import Add, Concatenate
from bigtrain.api.layers.transformer import PositionalEmbedding, TransformerBlock

LAYER_CLASSES = {c.__name__: c for c in (InputLayer, Dense, Activation, Dropout, Flatten, Reshape,
                                         Embedding, LayerNormalization, BatchNormalization,
                                         Concatenate, Add, PositionalEmbedding, TransformerBlock)}

__all__ = ["Input", "InputLayer", "KerasTensor", "Layer", *LAYER_CLASSES]
