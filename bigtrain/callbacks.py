"""Keras-style callbacks: `from bigtrain.callbacks import EarlyStopping, ModelCheckpoint`."""
from bigtrain.engine.callbacks import *  # noqa: F401,F403
from bigtrain.engine.callbacks import __all__  # noqa: F401
