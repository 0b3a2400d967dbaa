"""Recurrent layers with Keras's arguments and weight layouts, run by torch's fused kernels.

Keras's default SimpleRNN, LSTM and GRU (reset_after=True) compute exactly what torch's
`rnn_tanh`/`lstm`/`gru` kernels compute, so a whole sequence runs in one fused call (no
Python loop over steps):

- LSTM: Keras z = x @ kernel + h @ recurrent_kernel + bias, gates i, f, c, o: torch's order
  (i, f, g, o) with W_ih = kernel.T, W_hh = recurrent_kernel.T, b_ih = bias and b_hh = 0.
- GRU (reset_after=True): Keras gates z, r, h with bias (2, 3u) = (input bias, recurrent
  bias); h_t = z * h + (1 - z) * tanh(x W_h + b0_h + r * (h U_h + b1_h)). torch's GRU is the
  same formula with gates in the order r, z, n, so the kernels' column blocks are reordered.
- SimpleRNN: h_t = tanh(x W + h U + b) is `rnn_tanh` (or `rnn_relu`) with b_hh = 0.

Parameters are kept in torch's layout; `keras_weights` converts to Keras's. In training with
`recurrent_dropout` > 0 the recurrence runs step by step instead (rnn_loop), as Keras's does,
and so does an LSTM or GRU whose `recurrent_activation` is not sigmoid (e.g. hard_sigmoid,
Keras 2's default), which torch's fused kernels cannot compute.
"""
from __future__ import annotations

import torch
from torch import nn

from bigtrain.api.activations import ACTIVATIONS, HALVES_LAST_AXIS
from bigtrain.api.layers import rnn_loop
from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.normalization import as_float
from bigtrain.api.layers.rnn_mask import run_masked
from bigtrain.api.layers.weight_options import WeightOptions


def _same(t):
    return t


def _transpose(t):
    return t.T


def _layer_from(value) -> Layer:
    """A wrapped layer, or one rebuilt from its saved {"class", "config"}."""
    if isinstance(value, dict):
        from bigtrain.api.layers import LAYER_CLASSES  # the registry imports this module
        return LAYER_CLASSES[value["class"]](**value["config"])
    return value


def _gru_swap(t, u):
    """Swap the first two gate blocks of the last axis: Keras (z, r, h) <-> torch (r, z, n)."""
    blocks = t.reshape(*t.shape[:-1], 3, u)
    return blocks[..., [1, 0, 2], :].reshape(t.shape)


def _gate_activation(layer, name, arg: str = "recurrent_activation") -> str:
    """An RNN's activation or an LSTM's or GRU's recurrent_activation: a Keras activation
    name of one value per value (sigmoid, hard_sigmoid, relu...; None is linear, as Keras)."""
    name = "linear" if name is None else name
    ok = isinstance(name, str) and name in ACTIVATIONS and name not in HALVES_LAST_AXIS \
        and name not in ("softmax", "log_softmax")
    if not ok:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {arg} must be the name of "
                         "an element-wise Keras activation ('sigmoid', 'hard_sigmoid', "
                         f"'relu', 'tanh', ...), got {name!r}")
    return name


class _RNN(Layer):
    """Shared machinery: argument checks, shapes, the fused call, go_backwards."""

    gates = 1
    #: the activations torch's fused kernels compute; any other element-wise one runs step
    #: by step (rnn_loop), as Keras's
    activations = ("tanh",)
    #: Keras keywords that change no number here: taken and ignored (Layer.__init__)
    harmless_keywords = ("unroll", "use_cudnn")
    #: one step's math, (input terms, recurrent terms, state, acts) -> new state, for the
    #: step-by-step path (bigtrain.api.layers.rnn_loop)
    cell = None
    #: the gates' activation (LSTM, GRU: Keras's recurrent_activation); torch's fused
    #: kernels compute sigmoid only, any other runs step by step
    recurrent_activation = "sigmoid"

    def __init__(self, units: int, activation="tanh", use_bias: bool = True,
                 return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.weight_options = {
            "kernel": WeightOptions("glorot_uniform", kernel_initializer, kernel_regularizer,
                                    kernel_constraint),
            "recurrent_kernel": WeightOptions("orthogonal", recurrent_initializer,
                                              recurrent_regularizer, recurrent_constraint),
            "bias": WeightOptions("zeros", bias_initializer, bias_regularizer, bias_constraint)}
        kind = type(self).__name__
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"{kind} units must be a positive integer, got {units!r}")
        activation = _gate_activation(self, activation, "activation")
        for arg, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{kind} {arg} must be in [0, 1), got {rate}")
        self.units, self.activation, self.use_bias = units, activation, use_bias
        self.return_sequences, self.go_backwards = bool(return_sequences), bool(go_backwards)
        self.return_state = bool(return_state)
        self.dropout, self.recurrent_dropout = float(dropout), float(recurrent_dropout)
        self.zero_output_for_mask = False  # Bidirectional sets it when returning sequences

    def _features(self, input_shape) -> int:
        if len(input_shape) != 2:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects inputs of rank 3 "
                             f"(batch, timesteps, features), got shape "
                             f"(None, {', '.join(map(str, input_shape))})")
        return input_shape[1]

    states = 1  # h; LSTM adds c

    def compute_output_shape(self, input_shape):
        self._features(input_shape)
        out = (input_shape[0], self.units) if self.return_sequences else (self.units,)
        return [out] + [(self.units,)] * self.states if self.return_state else out

    def output_mask(self, mask):
        return mask if self.return_sequences else None  # Keras: the mask follows sequences

    def build(self, input_shape):
        features, u, g = self._features(input_shape), self.units, self.gates
        self.weight_ih = nn.Parameter(torch.empty(g * u, features))
        self.weight_hh = nn.Parameter(torch.empty(g * u, u))
        nn.init.xavier_uniform_(self.weight_ih)  # Keras glorot_uniform on (features, g*u)
        nn.init.orthogonal_(self.weight_hh)      # Keras orthogonal on (u, g*u)
        self._init_bias()
        self._given_initializers()

    def _given_initializers(self) -> None:
        """kernel_/recurrent_/bias_initializer given by the user: drawn in Keras's layout
        (gates in Keras's order), then moved to torch's; an LSTM's forget gate bias is 1
        after it with unit_forget_bias, as Keras."""
        slots = {key: (to_keras, to_torch) for key, to_keras, to_torch in self.keras_weights()}
        for role, key in self.weight_roles().items():
            param, (to_keras, to_torch) = getattr(self, key), slots[key]
            shape = tuple(to_keras(param.detach()).shape)
            if self.weight_options[role].init_(param, to_torch, keras_shape=shape) and \
                    role == "bias":
                self._init_forget_bias()

    def _init_forget_bias(self) -> None:
        """An LSTM's forget gate bias of 1 (unit_forget_bias); other layers have none."""

    def weight_roles(self):
        return {"kernel": "weight_ih", "recurrent_kernel": "weight_hh",
                **({"bias": "bias"} if self.use_bias else {})}

    def _init_bias(self):
        if self.use_bias:
            self.bias = nn.Parameter(torch.zeros(self.gates * self.units))

    def _biases(self):
        """(b_ih, b_hh) for torch's kernel."""
        return self.bias, torch.zeros_like(self.bias)

    def _fused(self, x, state, params, batch_sizes=None):
        """torch's kernel on (B, T, F) or, with batch_sizes, packed data; state (1, B, u)s.

        Returns (outputs, new state tuple). Each cell (SimpleRNN, LSTM, GRU) runs its own."""
        raise NotImplementedError(f"{type(self).__name__} must define _fused (its torch kernel)")

    def run(self, x, mask=None):
        """(outputs (B, T, u) in the order the steps were taken, final states tuple (B, u))."""
        state = tuple(x.new_zeros(1, x.shape[0], self.units) for _ in range(self.states))
        if (self.recurrent_dropout and self.training) or self._stepwise():  # as Keras
            return self._run_dropped(x, mask, state)
        if self.dropout and self.training:  # one mask per sequence, as Keras
            keep = torch.empty_like(x[:, :1]).bernoulli_(1.0 - self.dropout)
            x = x * keep / (1.0 - self.dropout)
        params = [self.weight_ih, self.weight_hh, *(self._biases() if self.use_bias else ())]

        def kernel(inp, st, batch_sizes):
            return self._fused(inp, st, params, batch_sizes)

        if mask is not None:
            return run_masked(kernel, x, mask, state, self.go_backwards,
                              self.zero_output_for_mask)
        out, state = kernel(x.flip(1) if self.go_backwards else x, state, None)
        return out, tuple(s[0] for s in state)

    def _check_call(self, x, mask) -> None:
        """A tensor (and mask) handed to the layer itself, past the graph's shape checks."""
        kind = f"{type(self).__name__} {self.name!r}"
        if x.dim() != 3:
            raise ValueError(f"{kind} expects inputs of rank 3 (batch, timesteps, features), "
                             f"got a tensor of shape {tuple(x.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"{kind}: the time-step mask has shape {tuple(mask.shape)}, "
                             f"expected (batch, timesteps) = {tuple(x.shape[:2])} for inputs "
                             f"of shape {tuple(x.shape)}")

    def _stepwise(self) -> bool:
        """An activation (or the gates') is one torch's fused kernels do not compute."""
        return self.recurrent_activation != "sigmoid" or self.activation not in self.activations

    def _acts(self) -> tuple:
        """(activation, recurrent activation) as functions, for rnn_loop's cells."""
        return ACTIVATIONS[self.activation], ACTIVATIONS[self.recurrent_activation]

    def _run_dropped(self, x, mask, state):
        """One step at a time: in training with recurrent_dropout, Keras's per-gate masks;
        and for a recurrent_activation torch's kernels lack (dropouts in training only)."""
        b_ih, b_hh = self._biases() if self.use_bias else (None, None)
        drop = self.training
        xp = rnn_loop.input_projection(x, self.weight_ih, b_ih, self.gates,
                                       self.dropout if drop else 0.0)
        kernel = rnn_loop.step_kernel(self.cell, self.weight_hh, b_hh, self.gates,
                                      self.recurrent_dropout if drop else 0.0, x.shape[0],
                                      self._acts())
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return run_masked(kernel, xp, mask, state, self.go_backwards,
                          self.zero_output_for_mask, stepwise=True)

    def saved_activation_elems(self, x) -> int:
        """Elements autograd keeps per call for the planner: every step's gate
        pre-activations and states, (B, T, (gates + states) * u)."""
        return x.shape[0] * x.shape[1] * (self.gates + self.states) * self.units

    takes_mask = True

    def call(self, x, mask=None):
        mask = getattr(x, "_keras_mask", None) if mask is None else mask
        self._check_call(x, mask)
        x = as_float(x, self)  # Input(dtype="int32"): Keras's cast to the compute dtype
        out, state = self.run(x, mask)
        y = out if self.return_sequences else state[0]  # Keras's last output is h_T
        return [y, *state] if self.return_state else y

    def get_config(self):
        return {"name": self.name, "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards,
                "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
                # Keras's arguments say recurrent_initializer for the recurrent_kernel
                **{k.replace("recurrent_kernel_", "recurrent_"): v
                   for k, v in self.weight_options_config().items()}}


class SimpleRNN(_RNN):
    """`keras.layers.SimpleRNN(units)`: h_t = tanh(x_t W + h_{t-1} U + b).

    Keras weights: kernel (features, u), recurrent_kernel (u, u), bias (u,).
    """

    activations = ("tanh", "relu")
    cell = staticmethod(rnn_loop.simple_rnn_cell)

    def _fused(self, x, state, params, batch_sizes=None):
        kernel = torch.rnn_tanh if self.activation == "tanh" else torch.rnn_relu
        lead = (x,) if batch_sizes is None else (x, batch_sizes)
        tail = (True,) if batch_sizes is None else ()  # batch_first
        out, h = kernel(*lead, state[0], params, self.use_bias, 1, 0.0, self.training, False,
                        *tail)
        return out, (h,)

    def keras_weights(self):
        slots = [("weight_ih", _transpose, _transpose), ("weight_hh", _transpose, _transpose)]
        return slots + ([("bias", _same, _same)] if self.use_bias else [])


class LSTM(_RNN):
    """`keras.layers.LSTM(units)` (tanh, sigmoid gates, unit_forget_bias) on (B, T, features).

    Keras weights: kernel (features, 4u), recurrent_kernel (u, 4u), bias (4u,), gates i, f, c, o.

    Example:
        h = LSTM(64)(Embedding(10000, 32)(Input(shape=(100,), dtype="int64")))
    """

    gates = 4
    cell = staticmethod(rnn_loop.lstm_cell)

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid",
                 use_bias: bool = True, unit_forget_bias: bool = True, **kwargs):
        super().__init__(units, activation, use_bias, **kwargs)
        self.recurrent_activation = _gate_activation(self, recurrent_activation)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _init_bias(self):
        super()._init_bias()
        self._init_forget_bias()

    def _init_forget_bias(self):
        if self.use_bias and self.unit_forget_bias:
            with torch.no_grad():
                self.bias[self.units:2 * self.units] = 1.0  # the forget gate starts open

    states = 2  # h, c (Keras's return_state order)

    def _fused(self, x, state, params, batch_sizes=None):
        lead = (x,) if batch_sizes is None else (x, batch_sizes)
        tail = (True,) if batch_sizes is None else ()  # batch_first
        out, h, c = torch.lstm(*lead, state, params, self.use_bias, 1, 0.0, self.training,
                               False, *tail)
        return out, (h, c)

    def keras_weights(self):
        slots = [("weight_ih", _transpose, _transpose), ("weight_hh", _transpose, _transpose)]
        return slots + ([("bias", _same, _same)] if self.use_bias else [])

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias,
                "recurrent_activation": self.recurrent_activation}


class GRU(_RNN):
    """`keras.layers.GRU(units)` with sigmoid gates; reset_after=True (Keras 3's default)
    runs torch's fused kernel, reset_after=False (Keras 2's default: the reset gate before
    the recurrent kernel) runs step by step (rnn_loop.gru_reset_before_kernel).

    Keras weights: kernel (features, 3u), recurrent_kernel (u, 3u), bias (2, 3u) (one
    (3u,) with reset_after=False), gates z, r, h. Kept in torch's gate order (r, z, n):
    `keras_weights` swaps the first two blocks.
    """

    gates = 3
    cell = staticmethod(rnn_loop.gru_cell)

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid",
                 use_bias: bool = True, reset_after: bool = True, **kwargs):
        self.reset_after = bool(reset_after)
        super().__init__(units, activation, use_bias, **kwargs)
        self.recurrent_activation = _gate_activation(self, recurrent_activation)

    def _init_bias(self):
        if self.use_bias:  # (input, recurrent) biases; reset_after=False: one
            shape = (2, 3 * self.units) if self.reset_after else (3 * self.units,)
            self.bias = nn.Parameter(torch.zeros(shape))

    def run(self, x, mask=None):
        if self.reset_after:
            return super().run(x, mask)
        drop = self.training  # Keras's dropouts act in training only
        b = self.bias if self.use_bias else None
        xp = rnn_loop.input_projection(x, self.weight_ih, b, 3, self.dropout if drop else 0.0)
        kernel = rnn_loop.gru_reset_before_kernel(
            self.weight_hh, self.recurrent_dropout if drop else 0.0, x.shape[0], self._acts())
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        state = (x.new_zeros(1, x.shape[0], self.units),)
        return run_masked(kernel, xp, mask, state, self.go_backwards, self.zero_output_for_mask,
                          stepwise=True)

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after,
                "recurrent_activation": self.recurrent_activation}

    def _biases(self):
        return self.bias[0], self.bias[1]

    def _fused(self, x, state, params, batch_sizes=None):
        lead = (x,) if batch_sizes is None else (x, batch_sizes)
        tail = (True,) if batch_sizes is None else ()  # batch_first
        out, h = torch.gru(*lead, state[0], params, self.use_bias, 1, 0.0, self.training, False,
                           *tail)
        return out, (h,)

    def keras_weights(self):
        u = self.units

        def kernel_to_keras(w):  # torch (3u, n) in r, z, n -> Keras (n, 3u) in z, r, h
            return _gru_swap(w.T, u)

        def kernel_to_torch(k):
            return _gru_swap(k, u).T

        def swap(b):
            return _gru_swap(b, u)

        slots = [("weight_ih", kernel_to_keras, kernel_to_torch),
                 ("weight_hh", kernel_to_keras, kernel_to_torch)]
        return slots + ([("bias", swap, swap)] if self.use_bias else [])
