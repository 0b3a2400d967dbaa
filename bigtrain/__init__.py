"""bigtrain: Keras-simple training that scales from one CPU to many machines.

Example:
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    inputs = Input(shape=(1000,))
    outputs = Dense(10, activation="softmax")(Dense(512, activation="relu")(inputs))
    model = Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=10, batch_size=32)
"""
__version__ = "0.1.0"

from bigtrain.launch.join import is_main_process  # noqa: E402
from bigtrain.launch.parent_watch import follow_launcher  # noqa: E402
from bigtrain.utils import clear_session, set_seed, to_categorical  # noqa: E402

follow_launcher()  # a rank of `bigtrain run` ends with its launcher, SIGKILL included

__all__ = ["__version__", "clear_session", "is_main_process", "set_seed", "to_categorical"]
