"""Keras-style layers (`from bigtrain.layers import Dense, Input`)."""
from bigtrain.api.layers.base import KerasTensor, Layer
from bigtrain.api.layers.input_layer import Input, InputLayer
from bigtrain.api.layers.core import Activation, Dense, Dropout, Embedding, Flatten, Reshape
from bigtrain.api.layers.normalization import (BatchNormalization, GroupNormalization,
                                               LayerNormalization)
from bigtrain.api.layers.activation import ELU, LeakyReLU, PReLU, ReLU, Softmax
from bigtrain.api.layers.attention import AdditiveAttention, Attention, MultiHeadAttention
from bigtrain.api.layers.conv import Conv1D, Conv2D, Conv3D
from bigtrain.api.layers.conv_depthwise import (DepthwiseConv1D, DepthwiseConv2D,
                                                SeparableConv1D, SeparableConv2D)
from bigtrain.api.layers.conv_transpose import Conv1DTranspose, Conv2DTranspose, Conv3DTranspose
from bigtrain.api.layers.merge import (Add, Average, Concatenate, Dot, Maximum, Minimum,
                                       Multiply, Subtract)
from bigtrain.api.layers.noise import (AlphaDropout, GaussianDropout, GaussianNoise,
                                       SpatialDropout1D, SpatialDropout2D, SpatialDropout3D)
from bigtrain.api.layers.pooling import (AveragePooling1D, AveragePooling2D, AveragePooling3D,
                                         GlobalAveragePooling1D, GlobalAveragePooling2D,
                                         GlobalAveragePooling3D, GlobalMaxPooling1D,
                                         GlobalMaxPooling2D, GlobalMaxPooling3D, MaxPooling1D,
                                         MaxPooling2D, MaxPooling3D)
from bigtrain.api.layers.preprocessing import Lambda, Masking, Normalization, Rescaling
from bigtrain.api.layers.recurrent import GRU, LSTM, SimpleRNN
from bigtrain.api.layers.rnn_wrappers import Bidirectional, TimeDistributed
from bigtrain.api.layers.reshaping import (Cropping1D, Cropping2D, Cropping3D, Permute,
                                           RepeatVector, UpSampling1D, UpSampling2D,
                                           UpSampling3D, ZeroPadding1D, ZeroPadding2D,
                                           ZeroPadding3D)
from bigtrain.api.layers.transformer import PositionalEmbedding, TransformerBlock

LAYER_CLASSES = {c.__name__: c for c in (InputLayer, Dense, Activation, Dropout, Flatten, Reshape,
                                         Embedding, LayerNormalization, BatchNormalization,
                                         GroupNormalization,
                                         Concatenate, Add, Subtract, Multiply, Average,
                                         Maximum, Minimum, Dot,
                                         PositionalEmbedding, TransformerBlock,
                                         Conv1D, Conv2D, Conv3D, Conv2DTranspose,
                                         DepthwiseConv2D, SeparableConv2D,
                                         Conv1DTranspose, Conv3DTranspose, DepthwiseConv1D,
                                         SeparableConv1D,
                                         MaxPooling1D, MaxPooling2D, MaxPooling3D,
                                         AveragePooling1D, AveragePooling2D, AveragePooling3D,
                                         GlobalMaxPooling1D, GlobalMaxPooling2D,
                                         GlobalAveragePooling1D, GlobalAveragePooling2D,
                                         GlobalMaxPooling3D, GlobalAveragePooling3D,
                                         ZeroPadding1D, ZeroPadding2D, Cropping1D, Cropping2D,
                                         UpSampling1D, UpSampling2D, Permute, RepeatVector,
                                         ZeroPadding3D, Cropping3D, UpSampling3D,
                                         SpatialDropout1D, SpatialDropout2D, SpatialDropout3D,
                                         GaussianNoise, GaussianDropout, AlphaDropout,
                                         Rescaling, Normalization, Lambda, Masking, SimpleRNN,
                                         LSTM, GRU,
                                         Bidirectional, TimeDistributed, MultiHeadAttention,
                                         Attention, AdditiveAttention, ReLU, LeakyReLU,
                                         PReLU, ELU, Softmax)}

__all__ = ["Input", "InputLayer", "KerasTensor", "Layer", *LAYER_CLASSES]
