"""Keras-style layers: `from bigtrain.layers import Dense, Input` (as `keras.layers`)."""
from bigtrain.api.layers import *  # noqa: F401,F403
from bigtrain.api.layers import __all__  # noqa: F401
