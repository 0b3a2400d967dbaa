"""Keras-style layers: `from bigtrain.layers import Dense, Input` (as `keras.layers`)."""
from bigtrain.api.layers import *  # noqa: F401,F403
from bigtrain.api.layers import __all__  # noqa: F401


def __getattr__(name: str):
    """A Keras layer bigtrain does not offer: an error that says so and what to do."""
    from bigtrain.api.layers.missing import refusal
    raise refusal(name, __name__)
