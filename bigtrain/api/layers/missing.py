"""Keras 3 layers bigtrain does not offer, each with what to do instead, so that
`from bigtrain.layers import StringLookup` fails saying so rather than with Python's bare
"cannot import name"."""
from __future__ import annotations

_DATA = ("bigtrain trains on arrays and tensors: do this preprocessing on the data before "
         "fit (e.g. in a torch Dataset, or once with numpy), or in a Layer subclass")
_CELLS = ("use the SimpleRNN, LSTM or GRU layers (stacked for several layers), or write the "
          "recurrence as a Layer subclass")

#: Keras layer name -> what to do instead
NOT_OFFERED = {
    **{name: _DATA for name in (
        "AugMix", "AutoContrast", "CategoryEncoding", "CenterCrop",
        "ContrastLimitedAdaptiveHistogramEqualization", "CutMix", "Discretization",
        "Equalization", "HashedCrossing", "Hashing", "IntegerLookup", "MaxNumBoundingBoxes",
        "MelSpectrogram", "MixUp", "Pipeline", "RandAugment", "RandomBrightness",
        "RandomColorDegeneration", "RandomColorJitter", "RandomContrast", "RandomCrop",
        "RandomElasticTransform", "RandomErasing", "RandomFlip", "RandomGaussianBlur",
        "RandomGrayscale", "RandomHue", "RandomInvert", "RandomPerspective",
        "RandomPosterization", "RandomRotation", "RandomSaturation", "RandomSharpness",
        "RandomShear", "RandomTranslation", "RandomZoom", "Resizing", "Solarization",
        "STFTSpectrogram", "StringLookup", "TextVectorization")},
    **{name: _CELLS for name in ("RNN", "SimpleRNNCell", "LSTMCell", "GRUCell",
                                 "StackedRNNCells", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")},
    **{name: "wrap a torch module as a model with bigtrain.models.Model(module), or write "
             "a Layer subclass" for name in ("FlaxLayer", "JaxLayer", "TFSMLayer",
                                             "TorchModuleWrapper", "Wrapper")},
    "ActivityRegularization": "a penalty on a layer's outputs is not supported; add it to "
                              "a custom loss",
    "SpectralNormalization": "wrap the weight with torch.nn.utils.parametrizations."
                             "spectral_norm in a Layer subclass",
    "EinsumDense": "use Dense (on the last axis) or a Layer subclass with add_weight",
    "GroupQueryAttention": "use MultiHeadAttention",
    "ReversibleEmbedding": "use Embedding, and the embedding matrix in a Layer subclass",
    "InputSpec": "bigtrain checks input shapes from Input(shape=...); drop the InputSpec",
    **{name: "use AdaptiveAvgPool/AdaptiveMaxPool from torch.nn in a Layer subclass"
       for name in ("AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D",
                    "AdaptiveAveragePooling3D", "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D",
                    "AdaptiveMaxPooling3D")},
}


def refusal(name: str, module: str) -> Exception:
    """The error for `module.name`: an ImportError naming the Keras layer and what to do
    (it keeps its message through `from ... import`), else Python's AttributeError."""
    if name in NOT_OFFERED:
        return ImportError(f"bigtrain.layers has no {name}: Keras's keras.layers.{name} is not "
                           f"offered by bigtrain; {NOT_OFFERED[name]}")
    return AttributeError(f"module {module!r} has no attribute {name!r}")
