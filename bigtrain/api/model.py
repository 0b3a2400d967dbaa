"""`Model` and `Sequential`: the Keras-style front over any torch module.

A Model is an `nn.Module` holding the network in `self.net`: a `GraphModule` built from
`Model(inputs, outputs)`, the layers of a `Sequential`, or any user `nn.Module`
(`Model(module)`, `Model.from_module(module)`). compile/fit/evaluate/predict, the
per-batch calls and `optimizer` come from `bigtrain.api.trainer.Trainer` (as Keras's Model
takes them from its Trainer), which delegates to `bigtrain.api.training`; `inputs`,
`outputs`, `input_shape`, `get_layer` and the other graph attributes from
`bigtrain.api.model_graph.GraphAccess`.

Example:
    inputs = Input(shape=(1000,))
    outputs = Dense(10, activation="softmax")(Dense(512, activation="relu")(inputs))
    model = Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=10, batch_size=32)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bigtrain.api import training, weights
from bigtrain.api.architecture import graph_inputs
from bigtrain.api.call_inputs import call_inputs
from bigtrain.api.functional import GraphModule
from bigtrain.api.layers.base import KerasTensor, Layer, train_mode
from bigtrain.api.layers.layer_losses import losses_of
from bigtrain.api.model_graph import GraphAccess
from bigtrain.api.trainer import Trainer


class Model(Trainer, GraphAccess, nn.Module):
    """A trainable model with Keras's methods.

    Args:
        inputs: `Input` tensor(s) of a functional graph, or an `nn.Module` to wrap.
        outputs: the graph's output tensor(s) (functional form only).
        name: the model's name in summaries.
    """

    keras_kind = "Functional"  # how to_json names it, as Keras

    def __init__(self, inputs=None, outputs=None, name: str | None = None,
                 trainable: bool = True):
        super().__init__()
        self.name = name or "functional"
        self.compiled = None  # a training.Compiled after compile()
        self.pending_compile = None  # compile's call until an unbuilt Sequential builds
        self.metric_logs = None  # the latest call's logs, which `metrics` reads (metric_views)
        self.history, self.stop_training = None, False
        self.training = False  # model(x) is inference, as Keras's, until model.train()
        self._optimizer = None  # the torch optimizer a running fit steps (see optimizer)
        self.live = None  # a bigtrain.engine.live.LiveWeights while fit runs (the loop sets it)
        self._full_weights = None  # see keep_full_weights
        self._carry = None  # a Carry after a fit, until the next compile; see keep_optimizer
        # the optimizer object compile was given and its rate then (Trainer.compile)
        self._compiled_with, self._compiled_rate = None, None
        self._batch_runner = None  # what *_on_batch calls share (bigtrain.api.batch_calls)
        if isinstance(inputs, nn.Module) and outputs is None:
            self.net = inputs
            self.name = name or type(inputs).__name__
        elif inputs is not None and outputs is not None:
            keys = sorted(outputs) if isinstance(outputs, dict) else None  # Keras's order
            ins, outs = graph_inputs(inputs), [outputs[k] for k in keys] if keys else \
                list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            for t in ins + outs:
                if not isinstance(t, KerasTensor):
                    raise TypeError(f"Model(inputs, outputs) takes Input()/layer outputs, got "
                                    f"{type(t).__name__}; to wrap a torch module use Model(module)")
            self.net = GraphModule(ins, outs, output_keys=keys)
        elif inputs is None and outputs is None and type(self) is not Model:
            self.net = None  # Sequential builds it
        else:
            raise TypeError("use Model(inputs=..., outputs=...) or Model(torch_module)")
        self._trainable = bool(trainable)
        if not trainable:  # Model(..., trainable=False); True leaves each layer's own flag
            self._apply_trainable()

    @classmethod
    def from_module(cls, module: nn.Module, name: str | None = None) -> "Model":
        """Wrap any `torch.nn.Module` so it trains with compile/fit."""
        return cls(module, name=name)

    def forward(self, *xs, **options):
        """The outputs for `xs`, as Keras's `model(x)`: inference unless `training=True`
        (every layer in that mode); without training=, layers called with `training=` in
        the graph run in that mode, as in Keras 3. On Input tensors (or other layers'
        outputs) the model is a layer of a new functional model: `base(x, training=False)`."""
        mode = options.pop("training", None)
        if options:
            raise TypeError(f"model {self.name!r} was called with {', '.join(options)}=; a "
                            "model takes its inputs and training= only")
        if isinstance(self.net, GraphModule) and len(xs) == 1 and \
                isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])  # Keras's model([a, b])
        if self.net is None and xs:  # a Sequential without an input shape: Keras builds it
            from bigtrain.api.architecture import build_on_data
            build_on_data(self, xs[0])
        if self.net is not None:  # numpy arrays (or a dict by input name), as Keras takes them
            xs = call_inputs(self.net, xs)
        if xs and isinstance(xs[0], KerasTensor):
            if not isinstance(self.net, GraphModule):
                raise TypeError(f"model {self.name!r} wraps a torch module, which cannot be "
                                "called on Input tensors; build it from layers")
            return self.net.call_symbolic(list(xs), self, mode)
        # what Keras returns: the output layers apply their activation, also one that
        # compile moved into the loss (which only fit's and evaluate's steps defer)
        with training.output_activations(self, deferred=False):
            if isinstance(self.net, GraphModule):  # Keras: inference unless training=True
                with train_mode(self.net, False if mode is None and not self.training else mode):
                    return self.net.keyed(self.net(*xs, recorded_modes=mode is None))
            with train_mode(self.net, mode):
                return self.net(*xs)

    # ---- structure -----------------------------------------------------------------------
    @property
    def losses(self) -> list[torch.Tensor]:
        """Keras's `model.losses`: what the layers added in the latest call (add_loss,
        activity regularizers), then the penalties of the regularized weights."""
        return losses_of(self.net) if self.net is not None else []

    @property
    def layers(self) -> list[nn.Module]:
        """The layers in Keras's order (a model called as a layer is one entry), InputLayers
        included as in Keras's functional models (a Sequential's `layers` leaves them out)."""
        if isinstance(self.net, GraphModule):
            return list(self.net.keras_layers)
        return list(self.net.children()) if self.net is not None else []

    # ---- weights as Keras lists them (bigtrain.api.summary.Weight) --------------------------
    @property
    def weights(self) -> list:
        """Every weight in Keras's order (that of get_weights), as live `Weight` views:
        `.shape` and `.numpy()` in Keras's layout, `.value` the torch tensor."""
        from bigtrain.api.summary import keras_weights
        return keras_weights(self.net) if self.net is not None else []

    @property
    def trainable_weights(self) -> list:
        """The weights that train: parameters not frozen (`trainable = False`)."""
        return [w for w in self.weights if w.trainable]

    @property
    def non_trainable_weights(self) -> list:
        """Frozen parameters and the buffers Keras lists (BatchNormalization's moving
        mean and variance), in Keras's order."""
        return [w for w in self.weights if not w.trainable]

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Every layer's `trainable`, as Keras sets it: False freezes every weight (and runs
        BatchNormalization on its moving statistics), True makes every layer train again.
        As in Keras 3, the next fit or train_on_batch trains accordingly, compiled again or
        not (a new compile is not needed)."""
        self._trainable = bool(value)
        self._apply_trainable()

    def _apply_trainable(self) -> None:
        if self.net is None:
            return
        from bigtrain.api.layers.base import Layer
        for m in self.net.modules():
            if isinstance(m, Layer):
                m.__dict__["_trainable"] = self._trainable
        for p in self.net.parameters():  # a wrapped torch module's too
            p.requires_grad_(self._trainable)

    # ---- architecture as a dict / JSON (Keras's get_config, to_json) ----------------------
    def get_config(self) -> dict:
        """The architecture (no weights), which `Model.from_config` rebuilds."""
        from bigtrain.api.architecture import model_config
        return model_config(self)

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Model":
        """A new model (fresh weights) from `get_config()`; `custom_objects`: {class name:
        Layer subclass} for layers of your own."""
        from bigtrain.api.architecture import model_from_config
        return model_from_config(config, custom_objects, Model, Sequential)

    def to_json(self, **kwargs) -> str:
        """The architecture as JSON, which `bigtrain.models.model_from_json` reads
        (`kwargs` go to `json.dumps`)."""
        from bigtrain.api.architecture import model_json
        return model_json(self, **kwargs)

    def count_params(self) -> int:
        """All weights, as Keras counts them: trainable and frozen parameters and the
        non-trainable buffers Keras lists (BatchNormalization's moving mean and variance)."""
        from bigtrain.api.summary import model_weights
        return sum(w.numel() for w, _ in model_weights(self))

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None) -> str:
        """Print (and return) each layer's output shape and parameter count, and the bytes
        of parameters, gradients and optimizer state for the compiled optimizer.

        Args, as Keras's: `print_fn` receives the whole summary in one call, as Keras 3's
        does (default: print); `show_trainable` adds a Y/N/- column; `layer_range` =
        (first, last) layer-name regexes; `line_length` and `positions` (fractions of the
        line, or column ends) set the columns. `expand_nested` is ignored: a model called
        as a layer is one row, as Keras prints it by default.
        """
        from bigtrain.api.summary import summary_text
        text = summary_text(self, line_length, positions, show_trainable, layer_range)
        (print_fn or print)(text)
        return text

    # ---- compile, fit, evaluate, predict, *_on_batch, optimizer: in Trainer ----------------
    def generate(self, idx, max_new_tokens: int, **kwargs):
        """Sample tokens from a language model whose network has `generate` (e.g. the GPT)."""
        if not hasattr(self.net, "generate"):
            raise AttributeError(f"{type(self.net).__name__} has no generate(); only language "
                                 "models such as bigtrain.zoo.GPT can generate")
        was_training = self.net.training
        self.net.eval()
        try:
            return self.net.generate(torch.as_tensor(idx), max_new_tokens, **kwargs)
        finally:
            self.net.train(was_training)

    # ---- weights --------------------------------------------------------------------------
    @property
    def _live(self):
        """(strategy, wrapped module) while fit runs, else None."""
        return None if self.live is None else (self.live.strategy, self.live.module)

    def keep_full_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Keep the full weights of a fit beside a network the strategy changed in place
        (DTensor shards inside a launched job): weights are read from `state` from now on."""
        self._full_weights = state

    def state_for_saving(self) -> dict[str, torch.Tensor]:
        """The full, unsharded state dict of the network (valid during a distributed fit)."""
        if self.live is not None:
            return self.live.full_state()
        if self._full_weights is not None:
            return self._full_weights
        if any(hasattr(p, "to_local") for p in self.net.parameters()):
            raise RuntimeError("this rank holds only shards of the model (a sharded fit inside a "
                               "launched job); its full weights are on rank 0: read them where "
                               "bigtrain.is_main_process() is True")
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def get_weights(self) -> list[np.ndarray]:
        """Weights as Keras lists them: per layer, a Dense kernel shaped (inputs, units),
        then its bias; BatchNormalization's gamma, beta, moving mean and variance."""
        if self.net is None:  # a Sequential not built yet has none, as Keras's
            return []
        return weights.get_weights(self.net, self.state_for_saving())

    def set_weights(self, values: list) -> None:
        weights.set_weights(self.net, values, live=self._live)

    def save_weights(self, filepath: str, overwrite: bool = True,
                     max_shard_size=None) -> None:
        """The weights as safetensors (any file name), which `load_weights` reads; Keras's
        arguments as in `bigtrain.api.save_args.save_weights_as_keras`."""
        from bigtrain.api.save_args import save_weights_as_keras
        save_weights_as_keras(self, filepath, overwrite, max_shard_size)

    def load_weights(self, filepath: str, skip_mismatch: bool = False, **kwargs) -> None:
        """Weights saved by `save_weights` or `save`, matched by name (or by order where
        only automatic names differ); `skip_mismatch=True` leaves the weights whose shape
        differs as they are, with a warning, as Keras's."""
        from bigtrain.api.save_args import load_weights_as_keras
        load_weights_as_keras(self, filepath, skip_mismatch, kwargs)

    def save(self, filepath: str, overwrite: bool = True, include_optimizer: bool = True,
             **kwargs) -> None:
        """Architecture as JSON, weights and the optimizer's state as safetensors, in one file
        (any name: `.keras` and `.bigtrain` alike) that `bigtrain.models.load_model` reads.

        Args:
            overwrite: False refuses to replace an existing file (Keras asks).
            include_optimizer: keep the optimizer state that the next fit continues from
                (False: a fit of the loaded model starts a fresh optimizer).
            **kwargs: Keras's `zipped` (None or True: the one file).
        """
        from bigtrain.api.save_args import save_as_keras
        save_as_keras(self, filepath, overwrite, include_optimizer, kwargs)


class Sequential(Model):
    """A linear stack of layers, as `keras.Sequential`.

    Example:
        model = Sequential([Input(shape=(784,)), Dense(64, activation="relu"), Dense(10)])
        model.add(Activation("softmax"))
    """

    keras_kind = "Sequential"  # how to_json names it, as Keras

    def __init__(self, layers=None, name: str | None = None, trainable: bool = True):
        super().__init__(name=name or "sequential", trainable=trainable)
        self._stack: list = []
        self._input = None
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self) -> list[nn.Module]:
        return list(self._stack)  # also before the input shape is known, as Keras's

    def pop(self) -> nn.Module:
        """Remove and return the last layer, as Keras's `Sequential.pop`.

        A compiled model must be compiled again before it trains: the loss was fitted to the
        removed output layer (e.g. its softmax moved into the loss)."""
        if not self._stack:
            raise TypeError("There are no layers in the model.")
        layer = self._stack.pop()
        if hasattr(layer, "defer_activation"):
            layer.defer_activation = False  # the plain forward again, outside this model
        self.net = None
        self.compiled, self._carry, self._batch_runner = None, None, None
        if self._input is not None and self._stack:
            self.build()
        return layer

    def add(self, layer) -> None:
        if isinstance(layer, KerasTensor):
            if self._stack or self._input is not None:
                raise ValueError("an Input can only come first in a Sequential")
            self._input = layer
            return
        if not isinstance(layer, (Layer, nn.Module)):
            raise TypeError(f"Sequential takes layers, got {type(layer).__name__}")
        if self._input is None and not self._stack and getattr(layer, "declared_input_shape", None):
            from bigtrain.api.layers import Input
            self._input = Input(layer.declared_input_shape)
        self._stack.append(layer)
        self.net = None
        if self._input is not None:
            self.build()

    def build(self, input_shape: tuple | None = None) -> None:
        """Connect the stack into a graph (done automatically once the input shape is known,
        and by the first fit/evaluate/predict or call from its data's shape). `input_shape`:
        Keras's batch shape `(None, *shape)`, or the shape of one sample."""
        from bigtrain.api.architecture import sample_shape
        from bigtrain.api.layers import Input
        if self._input is None:
            if input_shape is None:
                raise ValueError("the Sequential has no input shape yet: start it with "
                                 "Input(shape=...) or give the first layer input_shape=...")
            self._input = Input(sample_shape(input_shape))
        x = self._input
        for layer in self._stack:
            x = layer(x)
        self.net = GraphModule([self._input], [x])
        if not self._trainable:  # Sequential(trainable=False): the layers added freeze too
            self._apply_trainable()
