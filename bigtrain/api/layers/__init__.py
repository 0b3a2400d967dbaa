"""Keras-style layers (`from bigtrain.layers import Dense, Input`)."""
from bigtrain.api.layers.base import Input, InputLayer, KerasTensor, Layer
from bigtrain.api.layers.core import (Activation, BatchNormalization, Dense, Dropout, Embedding,
                                      Flatten, LayerNormalization, Reshape)
from bigtrain.api.layers.conv import (Conv1D, Conv2D, Conv2DTranspose, Conv3D, DepthwiseConv2D,
                                      SeparableConv2D)
from bigtrain.api.layers.merge import Add, Concatenate
from bigtrain.api.layers.transformer import PositionalEmbedding, TransformerBlock

LAYER_CLASSES = {c.__name__: c for c in (InputLayer, Dense, Activation, Dropout, Flatten, Reshape,
                                         Embedding, LayerNormalization, BatchNormalization,
                                         Concatenate, Add, PositionalEmbedding, TransformerBlock,
                                         Conv1D, Conv2D, Conv3D, Conv2DTranspose,
                                         DepthwiseConv2D, SeparableConv2D)}

__all__ = ["Input", "InputLayer", "KerasTensor", "Layer", *LAYER_CLASSES]
