"""Keras's single-head attention layers: Attention (dot-product, Luong) and
AdditiveAttention (Bahdanau), on [query, value] or [query, value, key].

`return_attention_scores=True` at call time returns (outputs, scores) as Keras does: the
scores are the softmax weights (B, Tq, Tv) after masking (and after dropout in training).

Example:
    out, scores = Attention()([q, v], return_attention_scores=True)  # (B, Tq, dv), (B, Tq, Tv)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.layers.attention import _NEG, _and, _causal, _fmt, _same
from bigtrain.api.layers.base import Layer


class Attention(Layer):
    """`keras.layers.Attention`: dot-product attention on [query, value] or [query, value, key].

    scores = query @ key^T (times a learned scalar with use_scale=True); score_mode="concat"
    scores sum(tanh(query + key)) instead. `use_causal_mask=True` at call time. Time-step
    masks as Keras's: the value's hides those steps from every query, a masked query step
    gives zeros, and the output keeps the query's mask.
    """

    takes_mask = True
    takes_list = True

    def __init__(self, use_scale: bool = False, score_mode: str = "dot", dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"Attention score_mode must be 'dot' or 'concat', got {score_mode!r}")
        self.use_scale, self.score_mode, self.dropout = use_scale, score_mode, float(dropout)

    def _check(self, shapes):
        if len(shapes) not in (2, 3):
            raise ValueError(f"{type(self).__name__} {self.name!r} takes [query, value] or "
                             f"[query, value, key], got {len(shapes)} tensors")
        q, v = shapes[0], shapes[1]
        k = shapes[2] if len(shapes) == 3 else v
        if len(q) != 2 or len(v) != 2 or len(k) != 2 or q[1] != k[1] or k[0] != v[0]:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs query (Tq, dim), value "
                             f"(Tv, dv) and key (Tv, dim); got query {_fmt(q)}, value {_fmt(v)}, "
                             f"key {_fmt(k)}")
        return q, v

    _scores_shape = False  # the call being connected returns the attention scores too

    def __call__(self, inputs, *args, return_attention_scores: bool = False, **kwargs):
        if return_attention_scores:  # a graph node records it (its outputs: two tensors)
            kwargs["return_attention_scores"] = True
        self._scores_shape = bool(return_attention_scores)  # compute_output_shape's answer
        try:
            return super().__call__(inputs, *args, **kwargs)
        finally:
            self._scores_shape = False

    def compute_output_shape(self, shapes):
        q, v = self._check(shapes)
        k = shapes[2] if len(shapes) == 3 else v
        return [(q[0], v[1]), (q[0], k[0])] if self._scores_shape else (q[0], v[1])

    def build(self, shapes):
        self._check(shapes)
        if self.use_scale:
            self.scale = nn.Parameter(torch.ones(()))
        if self.score_mode == "concat":
            self.concat_score_weight = nn.Parameter(torch.ones(()))

    def _scores(self, q, k):
        if self.score_mode == "dot":
            s = q @ k.transpose(-2, -1)
            return s * self.scale if self.use_scale else s
        t = q.unsqueeze(-2) + k.unsqueeze(-3)  # (B, Tq, Tv, dim)
        return self.concat_score_weight * torch.tanh(self.scale * t if self.use_scale else t).sum(-1)

    def output_mask(self, masks):
        return masks[0] if isinstance(masks, list) else masks  # the query's

    def call(self, parts, use_causal_mask=False, mask=None, return_attention_scores=False):
        q, v = parts[0], parts[1]
        k = parts[2] if len(parts) == 3 else v
        q_mask, v_mask = (None, None) if mask is None else (mask[0], mask[1])
        scores = self._scores(q, k)  # (B, Tq, Tv)
        keep = None if v_mask is None else v_mask.bool().unsqueeze(-2)  # (B, 1, Tv)
        if use_causal_mask:
            keep = _and(keep, _causal(scores.shape[-2], scores.shape[-1], scores.device))
        if keep is not None:
            scores = torch.where(keep, scores, scores - _NEG)
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = weights @ v
        out = out if q_mask is None else torch.where(q_mask.bool().unsqueeze(-1), out, 0.0)
        return (out, weights) if return_attention_scores else out  # Keras's dropped weights

    def keras_weights(self):
        names = (["scale"] if self.use_scale else []) + (
            ["concat_score_weight"] if self.score_mode == "concat" else [])
        return [(n, _same, _same) for n in names]

    def get_config(self):
        return {"name": self.name, "use_scale": self.use_scale, "score_mode": self.score_mode,
                "dropout": self.dropout}


class AdditiveAttention(Attention):
    """`keras.layers.AdditiveAttention` (Bahdanau): scores = sum(scale * tanh(query + key)),
    with a learned per-feature `scale` (dim,) when use_scale=True (the default)."""

    def __init__(self, use_scale: bool = True, dropout: float = 0.0, **kwargs):
        super().__init__(use_scale=use_scale, dropout=dropout, **kwargs)

    def build(self, shapes):
        q, _ = self._check(shapes)
        if self.use_scale:
            self.scale = nn.Parameter(torch.empty(q[1]))
            nn.init.uniform_(self.scale, -math.sqrt(6.0 / (2 * q[1])), math.sqrt(6.0 / (2 * q[1])))

    def _scores(self, q, k):
        t = torch.tanh(q.unsqueeze(-2) + k.unsqueeze(-3))  # (B, Tq, Tv, dim)
        return (t * self.scale).sum(-1) if self.use_scale else t.sum(-1)

    def keras_weights(self):
        return [("scale", _same, _same)] if self.use_scale else []

    def get_config(self):
        return {"name": self.name, "use_scale": self.use_scale, "dropout": self.dropout}
