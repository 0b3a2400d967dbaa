"""Keras-style models: `from bigtrain.models import Model, Sequential, load_model`."""
from bigtrain.api.model import Model, Sequential
from bigtrain.api.saving import load_model

__all__ = ["Model", "Sequential", "load_model"]
