"""MultiHeadAttention with Keras's arguments and weights (Attention and AdditiveAttention:
attention_scores.py).

In a graph it takes a list of tensors (query, value, optional key, optional mask); it keeps
Keras's call form `mha(query, value, key=None, attention_mask=None, use_causal_mask=False)`
and packs it into that list itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.weight_options import WeightOptions
from bigtrain.parallel.layer_split import SplitsItself, copy_to_tp, local, reduce_from_tp, \
    shard_param

_NEG = 1e9  # Keras's large negative score for masked positions (float32)


def _same(t):
    return t


def _fmt(shape) -> str:
    return "(None, " + ", ".join(map(str, shape)) + ")"


def _and(a, b):
    """a & b, either of them None (no mask)."""
    return b if a is None else a if b is None else a & b


def _causal(tq: int, tk: int, device) -> torch.Tensor:
    """(Tq, Tk) bool: query i sees keys j <= i, as Keras's use_causal_mask."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril()


def _glorot_keras(w: torch.Tensor, input_axes: int) -> None:
    """Keras 3's glorot_uniform for an EinsumDense kernel: fan in over the kernel's first
    `input_axes` axes (those it contracts with the input), fan out over the rest."""
    fan_in, fan_out = math.prod(w.shape[:input_axes]), math.prod(w.shape[input_axes:])
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(w, -limit, limit)


def _steps_axes(name: str, attention_axes):
    """Keras's `attention_axes` where it names the default, the steps axis of (batch,
    steps, features) inputs (1 or -2, as an int or a one-item list); None for the default."""
    if attention_axes is None:
        return None
    axes = [attention_axes] if isinstance(attention_axes, int) else list(attention_axes)
    if [a + 3 if a < 0 else a for a in axes] != [1]:
        raise ValueError(f"MultiHeadAttention {name!r}: attention_axes={attention_axes!r} is "
                         "not supported; bigtrain attends over the steps axis of (batch, "
                         "steps, features) inputs (attention_axes=None or (1,))")
    return axes


class MultiHeadAttention(Layer, SplitsItself):
    """`keras.layers.MultiHeadAttention(num_heads, key_dim)`, called `mha(query, value, key)`.

    Keras weights: query/key kernels (d, heads, key_dim) with biases (heads, key_dim), the
    value kernel (d, heads, value_dim) with bias (heads, value_dim), and the output kernel
    (heads, value_dim, out) with bias (out,). Runs torch's fused scaled-dot-product attention.

    Example:
        x = Input(shape=(16, 32))
        y, scores = MultiHeadAttention(num_heads=4, key_dim=8)(
            x, x, use_causal_mask=True, return_attention_scores=True)  # (B, 4, 16, 16)
    """

    #: the query's and value's (and key's) time-step masks join the attention mask, and
    #: the output keeps the query's, as Keras's
    takes_mask = True
    takes_list = True

    def __init__(self, num_heads: int, key_dim: int | None = None, value_dim: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True, output_shape=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, attention_axes=None, flash_attention=None, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.attention_axes = _steps_axes(self.name, attention_axes)
        del flash_attention, seed  # torch picks its fused kernel; dropout uses torch's RNG
        self.weight_options = {
            "kernel": WeightOptions("glorot_uniform", kernel_initializer, kernel_regularizer,
                                    kernel_constraint),
            "bias": WeightOptions("zeros", bias_initializer, bias_regularizer, bias_constraint)}
        if key_dim is None:
            raise ValueError(f"MultiHeadAttention {self.name!r} needs key_dim (the size of each "
                             "head's query and key), e.g. MultiHeadAttention(num_heads=4, "
                             "key_dim=64)")
        if not isinstance(num_heads, int) or num_heads <= 0 or int(key_dim) <= 0:
            raise ValueError(f"MultiHeadAttention needs positive num_heads and key_dim, got "
                             f"{num_heads!r} and {key_dim!r}")
        if isinstance(output_shape, (tuple, list)):
            if len(output_shape) != 1:
                raise ValueError("MultiHeadAttention output_shape must be one size "
                                 f"(the last axis), got {output_shape!r}")
            output_shape = output_shape[0]
        self.num_heads, self.key_dim = num_heads, int(key_dim)
        self.value_dim = int(value_dim) if value_dim is not None else self.key_dim
        self.dropout, self.use_bias, self.output_size = float(dropout), use_bias, output_shape
        self._has_key = self._has_mask = None  # fixed by the first call, as Keras's build

    def __call__(self, query, value=None, key=None, attention_mask=None,
                 use_causal_mask: bool = False, has_key: bool = False, has_mask: bool = False,
                 training=None, return_attention_scores: bool = False, **kwargs):
        if isinstance(query, (list, tuple)):  # the packed form a saved graph replays
            parts = list(query)
        else:
            if value is None:
                raise ValueError(f"MultiHeadAttention {self.name!r} is called as "
                                 "mha(query, value, key=None, attention_mask=None)")
            has_key, has_mask = key is not None, attention_mask is not None
            parts = [query, value] + ([key] if has_key else []) + (
                [attention_mask] if has_mask else [])
        if self._has_key is None:
            self._has_key, self._has_mask = has_key, has_mask
        elif (self._has_key, self._has_mask) != (has_key, has_mask):
            raise ValueError(f"MultiHeadAttention {self.name!r} was first called "
                             f"{'with' if self._has_key else 'without'} a key and "
                             f"{'with' if self._has_mask else 'without'} a mask; call it the "
                             "same way each time")
        if training is not None:  # Keras's call-time mode (Layer.__call__ records it)
            kwargs["training"] = training
        if return_attention_scores:  # a graph node records it (its outputs: two tensors)
            kwargs["return_attention_scores"] = True
        self._scores_shape = bool(return_attention_scores)  # compute_output_shape's answer
        try:
            return super().__call__(parts, use_causal_mask=bool(use_causal_mask),
                                    has_key=has_key, has_mask=has_mask, **kwargs)
        finally:
            self._scores_shape = False

    def _shapes(self, shapes):
        q, v = shapes[0], shapes[1]
        k = shapes[2] if self._has_key else v
        mask = shapes[-1] if self._has_mask else None
        for role, s in (("query", q), ("value", v), ("key", k)):
            if len(s) != 2:
                raise ValueError(f"MultiHeadAttention {self.name!r} expects a {role} of shape "
                                 f"(batch, steps, features), got {_fmt(s)}")
        if k[0] != v[0]:
            raise ValueError(f"MultiHeadAttention {self.name!r}: key {_fmt(k)} and value "
                             f"{_fmt(v)} must have the same number of steps")
        if mask is not None and tuple(mask) != (q[0], k[0]):
            raise ValueError(f"MultiHeadAttention {self.name!r}: attention_mask must have shape "
                             f"(None, {q[0]}, {k[0]}) (batch, query steps, key steps) for query "
                             f"{_fmt(q)} and key {_fmt(k)}, got {_fmt(mask)}")
        return q, v, k

    _scores_shape = False  # the call being connected returns the attention scores too

    def compute_output_shape(self, shapes):
        q, _, k = self._shapes(shapes)
        out = (q[0], self.output_size or q[1])
        return [out, (self.num_heads, q[0], k[0])] if self._scores_shape else out

    def build(self, shapes):
        q, v, k = self._shapes(shapes)
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        out = self.output_size or q[1]
        self.query_kernel = nn.Parameter(torch.empty(q[1], h, kd))
        self.key_kernel = nn.Parameter(torch.empty(k[1], h, kd))
        self.value_kernel = nn.Parameter(torch.empty(v[1], h, vd))
        self.output_kernel = nn.Parameter(torch.empty(h, vd, out))
        kernel = self.weight_options["kernel"]
        for w, axes in ((self.query_kernel, 1), (self.key_kernel, 1), (self.value_kernel, 1),
                        (self.output_kernel, 2)):
            # (d, heads, dim): d in, heads x dim out; output (heads, dim, out): out out
            fans = (math.prod(w.shape[:axes]), math.prod(w.shape[axes:]))
            if not kernel.init_(w, fans=fans):
                _glorot_keras(w, input_axes=axes)
        if self.use_bias:
            self.query_bias = nn.Parameter(torch.zeros(h, kd))
            self.key_bias = nn.Parameter(torch.zeros(h, kd))
            self.value_bias = nn.Parameter(torch.zeros(h, vd))
            self.output_bias = nn.Parameter(torch.zeros(out))
            for b in (self.query_bias, self.key_bias, self.value_bias, self.output_bias):
                self.weight_options["bias"].init_(b)

    def constrained_weights(self):
        """Every projection's kernel and bias (Keras's layout is torch's here)."""
        roles = [("kernel", w) for w in ("query", "key", "value", "output")]
        if self.use_bias:
            roles += [("bias", w) for w in ("query", "key", "value", "output")]
        out = []
        for role, which in roles:
            opts = self.weight_options[role]
            if opts.regularizer or opts.constraint:
                out.append((f"{which}_{role}", _same, _same, opts))
        return out

    def _project(self, x, role):
        """(B, T, d) -> (B, heads, T, dim) through the role's kernel (d, heads, dim)
        (this rank's heads under tensor parallelism)."""
        w = local(getattr(self, f"{role}_kernel"))
        y = x @ w.flatten(1)
        if self.use_bias:
            y = y + local(getattr(self, f"{role}_bias")).flatten()
        return y.unflatten(-1, w.shape[1:]).transpose(1, 2)

    # ---- tensor parallelism: heads split (bigtrain.parallel.layer_split) ----------------
    _tp_group = None  # the tensor-parallel process group once tp_apply split the heads

    def tp_split(self, degree: int) -> str | None:
        return None if self.num_heads % degree == 0 else \
            f"{self.num_heads} heads do not divide by {degree}"

    def tp_apply(self, tp_mesh) -> None:
        for role in ("query", "key", "value"):  # (d, heads, dim) and (heads, dim)
            shard_param(self, f"{role}_kernel", tp_mesh, 1)
            if self.use_bias:
                shard_param(self, f"{role}_bias", tp_mesh, 0)
        shard_param(self, "output_kernel", tp_mesh, 0)  # (heads, dim, out): partial sums
        self._tp_group = tp_mesh.get_group()

    def output_mask(self, masks):
        return masks[0] if isinstance(masks, list) else masks  # the query's

    def call(self, parts, use_causal_mask=False, has_key=False, has_mask=False, mask=None,
             return_attention_scores=False):
        query, value = parts[0], parts[1]
        key = parts[2] if has_key else value
        attend = parts[-1].bool() if has_mask else None
        want = (query.shape[0], query.shape[1], key.shape[1])
        if attend is not None and tuple(attend.shape) != want:  # a tensor handed in directly
            raise ValueError(f"MultiHeadAttention {self.name!r}: attention_mask must have "
                             f"shape (batch, query steps, key steps) = {want}, got "
                             f"{tuple(attend.shape)}")
        mask = _and(attend, self._input_masks(mask, has_key))
        if use_causal_mask:
            causal = _causal(query.shape[1], key.shape[1], query.device)
            mask = causal if mask is None else mask & causal
        bias = None
        if mask is not None:  # additive, so a fully masked row is uniform as in Keras
            bias = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill(~mask, -_NEG)
            bias = bias.unsqueeze(-3) if bias.dim() == 3 else bias  # (B, 1, Tq, Tk)
        group = self._tp_group
        if group is not None:  # input gradients summed over the ranks' heads
            query, key, value = (copy_to_tp(t, group) for t in (query, key, value))
        q, k, v = self._project(query, "query"), self._project(key, "key"), \
            self._project(value, "value")
        scores = None
        if return_attention_scores:
            o, scores = self._attend_with_scores(q, k, v, bias)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = o.transpose(1, 2).flatten(2) @ local(self.output_kernel).flatten(0, 1)  # (B,Tq,out)
        if group is not None:  # each rank's heads give a partial sum
            y = reduce_from_tp(y, group)
        y = y + self.output_bias if self.use_bias else y
        return (y, scores) if return_attention_scores else y

    def _attend_with_scores(self, q, k, v, bias):
        """return_attention_scores=True, as Keras's _compute_attention (the fused kernel has no
        scores): q, k, v (B, h, T, dim) -> (B, h, Tq, vd), softmax scores (B, h, Tq, Tk)."""
        if self._tp_group is not None:
            raise ValueError(f"MultiHeadAttention {self.name!r}: return_attention_scores=True "
                             "is not supported under tensor parallelism (each rank holds "
                             "only its heads' scores); fit with ddp, zero1/2/3 or fsdp")
        logits = (q / math.sqrt(self.key_dim)) @ k.transpose(-1, -2)  # (B, h, Tq, Tk)
        if bias is not None:
            logits = logits + bias
        scores = torch.softmax(logits, dim=-1)
        dropped = F.dropout(scores, self.dropout, self.training) if self.dropout else scores
        return dropped @ v, scores

    @staticmethod
    def _input_masks(masks, has_key):
        """(B, Tq, Tk) from the inputs' time-step masks (Keras's _compute_attention_mask):
        query (B, Tq) -> (B, Tq, 1), value and key (B, Tk) -> (B, 1, Tk), AND-ed; or None."""
        if masks is None:
            return None
        query, value = masks[0], masks[1]
        key = masks[2] if has_key else None
        out = None if query is None else query.bool().unsqueeze(-1)
        for m in (value, key):
            if m is not None:
                out = _and(out, m.bool().unsqueeze(-2))
        return out

    def keras_weights(self):
        roles = ("query", "key", "value", "output")
        if not self.use_bias:
            return [(f"{r}_kernel", _same, _same) for r in roles]
        return [(f"{r}_{w}", _same, _same) for r in roles for w in ("kernel", "bias")]

    def get_config(self):
        return {"name": self.name, "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout,
                "use_bias": self.use_bias, "output_shape": self.output_size,
                "attention_axes": self.attention_axes, **self.weight_options_config()}
