"""Keras-style layers (`from bigtrain.layers import Dense, Input`)."""
from bigtrain.api.layers.base import KerasTensor, Layer
from bigtrain.api.layers.input_layer import Input, InputLayer
from bigtrain.api.layers.core import Activation, Dense, Dropout, Embedding, Flatten, Reshape
from bigtrain.api.layers.normalization import (BatchNormalization, GroupNormalization,
                                               LayerNormalization)
from bigtrain.api.layers.activation import ELU, LeakyReLU, PReLU, ReLU, Softmax
from bigtrain.api.layers.attention import MultiHeadAttention
from bigtrain.api.layers.attention_scores import AdditiveAttention, Attention
from bigtrain.api.layers.conv import Conv1D, Conv2D, Conv3D
from bigtrain.api.layers.conv_depthwise import (DepthwiseConv1D, DepthwiseConv2D,
                                                SeparableConv1D, SeparableConv2D)
from bigtrain.api.layers.conv_transpose import Conv1DTranspose, Conv2DTranspose, Conv3DTranspose
from bigtrain.api.layers.extra import Identity, RMSNormalization, UnitNormalization
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
                                         PReLU, ELU, Softmax, Identity,
                                         UnitNormalization, RMSNormalization)}

#: Keras's other names of the same classes (keras.layers.MaxPool2D is MaxPooling2D)
ALIASES = {"AvgPool1D": AveragePooling1D, "AvgPool2D": AveragePooling2D,
           "AvgPool3D": AveragePooling3D, "MaxPool1D": MaxPooling1D, "MaxPool2D": MaxPooling2D,
           "MaxPool3D": MaxPooling3D, "GlobalAvgPool1D": GlobalAveragePooling1D,
           "GlobalAvgPool2D": GlobalAveragePooling2D, "GlobalAvgPool3D": GlobalAveragePooling3D,
           "GlobalMaxPool1D": GlobalMaxPooling1D, "GlobalMaxPool2D": GlobalMaxPooling2D,
           "GlobalMaxPool3D": GlobalMaxPooling3D, "Convolution1D": Conv1D,
           "Convolution2D": Conv2D, "Convolution3D": Conv3D,
           "Convolution1DTranspose": Conv1DTranspose, "Convolution2DTranspose": Conv2DTranspose,
           "Convolution3DTranspose": Conv3DTranspose,
           "SeparableConvolution1D": SeparableConv1D, "SeparableConvolution2D": SeparableConv2D}
globals().update(ALIASES)

__all__ = ["Input", "InputLayer", "KerasTensor", "Layer", *LAYER_CLASSES, *ALIASES]


def __getattr__(name: str):
    """A Keras layer bigtrain does not offer: an error that says so (and what to do), not
    Python's bare "cannot import name"."""
    from bigtrain.api.layers.missing import refusal
    raise refusal(name, __name__)
