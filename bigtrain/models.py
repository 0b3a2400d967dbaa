"""Keras-style models: `from bigtrain.models import Model, Sequential, load_model`."""
from bigtrain.api.model import Model, Sequential
from bigtrain.api.saving import clone_model, load_model, model_from_json

__all__ = ["Model", "Sequential", "clone_model", "load_model", "model_from_json"]
