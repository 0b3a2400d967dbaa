"""Keras's step-by-step recurrence, for `recurrent_dropout` in training.

Keras drops the previous output h_{t-1} before it meets the recurrent kernel, with masks
drawn once per sequence and reused at every step; whenever recurrent_dropout is set it
switches LSTM and GRU to `implementation=1`, which draws one independent mask per gate,
for the recurrent state and for the inputs alike (SimpleRNN: one mask). torch's fused
kernels cannot drop inside the recurrence, so this path runs one step at a time. It is
taken in training with recurrent_dropout > 0 (at inference both dropouts are off, as in
Keras, and the fused kernel runs), and always for a recurrent_activation other than
sigmoid, which torch's fused kernels do not take. A cell gets `acts`, (activation,
recurrent activation) as functions.

Weights are in torch's layout and gate order (LSTM i, f, g, o; GRU r, z, n).
"""
from __future__ import annotations

import torch


def _keep(shape, rate: float, like: torch.Tensor) -> torch.Tensor:
    """An inverted-dropout mask of `shape`: 0 with probability `rate`, else 1 / (1 - rate)."""
    mask = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - rate)
    return mask / (1.0 - rate)


def input_projection(x, weight_ih, b_ih, gates: int, rate: float) -> torch.Tensor:
    """All steps' input terms at once: (B, T, gates * u), x W_g (+ b) for each gate g, x
    dropped by the gate's own (B, F) mask, the same at every step."""
    if rate:
        b, _, f = x.shape
        keep = _keep((gates, b, 1, f), rate, x)
        w = weight_ih.view(gates, -1, f)  # (G, u, F)
        out = torch.einsum("gbtf,guf->btgu", x[None] * keep, w).flatten(2)
    else:
        out = x @ weight_ih.T
    return out if b_ih is None else out + b_ih


def step_kernel(cell, weight_hh, b_hh, gates: int, rate: float, batch: int, acts: tuple):
    """One step for `rnn_mask.run_stepwise`: kernel(input terms (B, 1, G*u), state tuple of
    (1, B, u), None) -> (None, new state tuple); h_{t-1} dropped by one (B, u) mask per gate
    (`rate` > 0), drawn here once for the whole sequence."""
    u = weight_hh.shape[1]
    keep = _keep((gates, batch, u), rate, weight_hh) if rate else None
    w = weight_hh.view(gates, u, u)  # (G, u out, u in)

    def kernel(xp, state, _batch_sizes):
        h = state[0][0]
        if keep is None:
            hp = h @ weight_hh.T  # (B, G*u)
        else:
            hp = torch.einsum("gbi,goi->bgo", h[None] * keep, w).flatten(1)  # (B, G*u)
        if b_hh is not None:
            hp = hp + b_hh
        new = cell(xp[:, 0], hp, tuple(s[0] for s in state), acts)
        return None, tuple(s[None] for s in new)
    return kernel


def simple_rnn_cell(xp, hp, state, acts):
    return (acts[0](xp + hp),)


def lstm_cell(xp, hp, state, acts):
    """c' = rec(f) c + rec(i) act(g), h' = rec(o) act(c') (Keras: tanh act, sigmoid rec)."""
    act, rec = acts
    i, f, g, o = (xp + hp).chunk(4, -1)
    c = rec(f) * state[1] + rec(i) * act(g)
    return rec(o) * act(c), c


def gru_cell(xp, hp, state, acts):
    """reset_after=True: n = act(x W_n + b0_n + r * (h U_n + b1_n)), h' = (1-z) n + z h
    (the undropped h, as Keras), r and z through the recurrent activation."""
    act, rec = acts
    xr, xz, xn = xp.chunk(3, -1)
    hr, hz, hn = hp.chunk(3, -1)
    r, z = rec(xr + hr), rec(xz + hz)
    n = act(xn + r * hn)
    return ((1 - z) * n + z * state[0],)


def gru_reset_before_kernel(weight_hh, rate: float, batch: int,
                            acts: tuple = (torch.tanh, torch.sigmoid)):
    """One step of Keras's GRU with reset_after=False (Keras 2's default), for
    `rnn_mask.run_stepwise`: r = sigmoid(x W_r + h U_r), z = sigmoid(x W_z + h U_z),
    n = tanh(x W_n + (r * h) U_n), h' = (1 - z) n + z h; the reset gate acts before the
    recurrent kernel, which torch's fused GRU cannot do. Input terms (bias included) come
    in `xp` (B, 1, 3u), torch's gate order r, z, n; h_{t-1} dropped by one (B, u) mask per
    gate when `rate` > 0."""
    u = weight_hh.shape[1]
    keep = _keep((3, batch, u), rate, weight_hh) if rate else None
    w_r, w_z, w_n = weight_hh.view(3, u, u)  # each (u out, u in)

    def kernel(xp, state, _batch_sizes):
        h = state[0][0]
        h_r, h_z, h_n = (h, h, h) if keep is None else (h * keep[0], h * keep[1], h * keep[2])
        x_r, x_z, x_n = xp[:, 0].chunk(3, -1)
        r = acts[1](x_r + h_r @ w_r.T)
        z = acts[1](x_z + h_z @ w_z.T)
        n = acts[0](x_n + (r * h_n) @ w_n.T)
        return None, (((1 - z) * n + z * h)[None],)
    return kernel
