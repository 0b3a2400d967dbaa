"""Merge layers that take a list of tensors: Concatenate, Dot, and the element-wise Add,
Subtract, Multiply, Average, Maximum and Minimum.

The element-wise layers broadcast as Keras does: equal sizes, or 1 against any size, with
the trailing axes aligned; a lower-rank input gets new axes after the batch axis
((None, 4) against (None, 3, 4) reads as (None, 1, 4)).
"""
from __future__ import annotations

import torch

from bigtrain.api.layers.base import Layer


def _fmt_all(shapes) -> str:
    return ", ".join("(None, " + ", ".join(map(str, s)) + ")" for s in shapes)


def _full_axis(axis: int, rank: int, what: str) -> int:
    """`axis` of a (batch, *rank axes) tensor counted from 0 = the batch axis."""
    full = axis + rank + 1 if axis < 0 else axis
    if not 0 <= full <= rank:
        raise ValueError(f"{what}: axis={axis} is out of range for inputs with {rank} axes "
                         "after the batch")
    return full


def _or(masks):
    """The element-wise OR of (B, T) masks, or of the graph's True flags."""
    out = masks[0]
    for m in masks[1:]:
        out = out | m
    return out


class Concatenate(Layer):
    """`keras.layers.Concatenate(axis=-1)([a, b, ...])`; axis 0 joins along the batch.

    Time-step masks merge as Keras's: each input's mask spread over its own shape (an
    unmasked input: all True), concatenated along `axis`, then any() over the last axis;
    so along the time axis the masks join end to end, along the features they are OR-ed.
    """

    takes_list = True

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def compute_output_shape(self, input_shapes):
        rank = len(input_shapes[0])
        axis = _full_axis(self.axis, rank, f"Concatenate {self.name!r}")
        rest = [(len(s),) + tuple(s[:axis - 1]) + tuple(s[axis:]) if axis else tuple(s)
                for s in input_shapes]
        if len(set(rest)) != 1:
            raise ValueError(f"Concatenate needs equal shapes except on axis {self.axis}, got "
                             f"{_fmt_all(input_shapes)}")
        if axis == 0:  # along the batch: the per-sample shape stays
            return tuple(input_shapes[0])
        out = list(input_shapes[0])
        sizes = [s[axis - 1] for s in input_shapes]
        out[axis - 1] = None if None in sizes else sum(sizes)  # None: any size
        return tuple(out)

    def call(self, tensors):
        return torch.cat(list(tensors), dim=self.axis)

    def output_mask(self, masks):
        return None if all(m is None for m in masks) else True  # the graph's flag

    def compute_mask(self, tensors, masks):
        if all(m is None for m in masks):
            return None
        spread = [torch.ones_like(x, dtype=torch.bool) if m is None else
                  m.reshape(*m.shape, *(1,) * (x.dim() - m.dim())).expand_as(x)
                  for x, m in zip(tensors, masks)]
        return torch.cat(spread, dim=self.axis).any(-1)

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class _Elementwise(Layer):
    """An element-wise merge of broadcastable inputs (Keras's `Merge`).

    Time-step masks: the output is masked where every input is, with the OR of their
    masks (Keras's `Merge.compute_mask`); the values are computed without them, as
    Keras's Add, Subtract and Average do."""

    takes_list = True

    def output_mask(self, masks):
        return None if any(m is None for m in masks) else _or(masks)

    def compute_output_shape(self, input_shapes):
        out: tuple = ()
        for shape in input_shapes:
            out = self._broadcast(out, tuple(shape), input_shapes)
        return out

    def _broadcast(self, a: tuple, b: tuple, shapes) -> tuple:
        """Keras's rule: the trailing axes aligned, each pair equal or one of them 1."""
        if len(a) < len(b):
            a, b = b, a
        out = list(a[:len(a) - len(b)])
        for i, j in zip(a[len(a) - len(b):], b):
            if None in (i, j):  # an axis of any size: Keras checks it when the data come
                out.append(j if i in (1, None) else i)
                continue
            if i != j and 1 not in (i, j):
                name = type(self).__name__
                raise ValueError(f"{name} needs inputs of one shape, or shapes that "
                                 f"broadcast (equal sizes or 1), got {_fmt_all(shapes)}")
            out.append(j if i == 1 else i)
        return tuple(out)

    def call(self, tensors, mask=None):
        rank = max(t.dim() for t in tensors)
        aligned = []
        for t in tensors:  # new axes after the batch axis, as Keras
            while t.dim() < rank:
                t = t.unsqueeze(1)
            aligned.append(t)
        if mask is None:
            return self._merge(aligned)
        spread = [None if m is None else _spread(m, x) for m, x in zip(mask, aligned)]
        return self._merge_masked(aligned, spread)

    def _merge(self, tensors):
        raise NotImplementedError

    def _merge_masked(self, tensors, masks):
        """The merge of `tensors` given each one's mask spread over its shape (or None);
        only for the layers that take masks (`takes_mask`)."""
        raise NotImplementedError


def _spread(mask, x):
    """A (B, T) mask as x's shape (B, T, ...), bool."""
    return mask.bool().reshape(*mask.shape, *(1,) * (x.dim() - mask.dim())).expand_as(x)


def _masked_pairwise(op, tensors, masks):
    """Keras's `_apply_merge_op_and_or_mask`: a masked step of one input takes the other
    input's value, so `op` (max, min) sees real steps only; the mask stays while every
    input so far has one."""
    out, out_mask = tensors[0], masks[0]
    for x, m in zip(tensors[1:], masks[1:]):
        if m is not None:
            x = torch.where(m, x, out)
        if out_mask is not None:
            out = torch.where(out_mask, out, x)
        out_mask = out_mask | m if m is not None and out_mask is not None else None
        out = op(out, x)
    return out


def _sum(tensors):
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


class Add(_Elementwise):
    """`keras.layers.Add()([a, b, ...])`: element-wise sum."""

    def _merge(self, tensors):
        return _sum(tensors)


class Subtract(_Elementwise):
    """`keras.layers.Subtract()([a, b])`: a - b."""

    def compute_output_shape(self, input_shapes):
        if len(input_shapes) != 2:
            raise ValueError(f"Subtract {self.name!r} takes exactly 2 inputs, got "
                             f"{len(input_shapes)}")
        return super().compute_output_shape(input_shapes)

    def _merge(self, tensors):
        return tensors[0] - tensors[1]


class Multiply(_Elementwise):
    """`keras.layers.Multiply()([a, b, ...])`: element-wise product."""

    takes_mask = True  # Keras's values depend on the masks here (masked steps skipped)

    def _merge(self, tensors):
        out = tensors[0]
        for t in tensors[1:]:
            out = out * t
        return out

    def _merge_masked(self, tensors, masks):
        """Keras's: masked steps count as 1; where every input is masked the output is 0."""
        out = None
        for x, m in zip(tensors, masks):
            x = x if m is None else torch.where(m, x, 1.0)
            out = x if out is None else out * x
        if any(m is None for m in masks):
            return out
        return torch.where(_or(masks), out, 0.0)


class Average(_Elementwise):
    """`keras.layers.Average()([a, b, ...])`: element-wise mean."""

    def _merge(self, tensors):
        return _sum(tensors) / len(tensors)


class Maximum(_Elementwise):
    """`keras.layers.Maximum()([a, b, ...])`: element-wise maximum."""

    takes_mask = True  # Keras's values depend on the masks here (masked steps skipped)

    def _merge(self, tensors):
        out = tensors[0]
        for t in tensors[1:]:
            out = torch.maximum(out, t)
        return out

    def _merge_masked(self, tensors, masks):
        return _masked_pairwise(torch.maximum, tensors, masks)


class Minimum(_Elementwise):
    """`keras.layers.Minimum()([a, b, ...])`: element-wise minimum."""

    takes_mask = True  # Keras's values depend on the masks here (masked steps skipped)

    def _merge(self, tensors):
        out = tensors[0]
        for t in tensors[1:]:
            out = torch.minimum(out, t)
        return out

    def _merge_masked(self, tensors, masks):
        return _masked_pairwise(torch.minimum, tensors, masks)


class Dot(Layer):
    """`keras.layers.Dot(axes, normalize=False)([x, y])`: per sample, the dot product of x's
    axis `axes[0]` with y's axis `axes[1]` (an int for both; counted with the batch axis).

    The output axes are x's others, then y's others (Keras's batch_dot); a (None,) result
    becomes (None, 1). `normalize=True` L2-normalizes both along those axes first, giving
    the cosine similarity. Keras drops a time-step mask here, and so does bigtrain.

    Example:
        scores = Dot(axes=2)([queries, keys])   # (None, Tq, d), (None, Tk, d) -> (None, Tq, Tk)
    """

    takes_list = True

    def __init__(self, axes, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axes, (list, tuple)):
            if len(axes) != 2 or not all(isinstance(a, int) for a in axes):
                raise ValueError(f"Dot {self.name!r}: axes must be an int or two ints, got "
                                 f"{axes!r}")
            axes = tuple(axes)
        elif not isinstance(axes, int):
            raise TypeError(f"Dot {self.name!r}: axes must be an int or two ints, got {axes!r}")
        self.axes, self.normalize = axes, bool(normalize)

    def _axes(self, rank_x: int, rank_y: int) -> tuple[int, int]:
        """The two contracted axes, counted with the batch axis (ranks exclude it)."""
        pair = (self.axes, self.axes) if isinstance(self.axes, int) else self.axes
        what = f"Dot {self.name!r}"
        out = (_full_axis(pair[0], rank_x, what), _full_axis(pair[1], rank_y, what))
        if 0 in out:
            raise ValueError(f"{what}: axes={self.axes} names the batch axis; a dot product "
                             "runs within each sample")
        return out

    def compute_output_shape(self, input_shapes):
        if len(input_shapes) != 2:
            raise ValueError(f"Dot {self.name!r} takes exactly 2 inputs, got "
                             f"{len(input_shapes)}")
        x, y = (list(s) for s in input_shapes)
        a, b = self._axes(len(x), len(y))
        if x[a - 1] != y[b - 1]:
            raise ValueError(f"Dot {self.name!r}: axis {a} of the first input ({x[a - 1]}) and "
                             f"axis {b} of the second ({y[b - 1]}) differ; shapes "
                             f"{_fmt_all(input_shapes)}")
        out = x[:a - 1] + x[a:] + y[:b - 1] + y[b:]
        return tuple(out) or (1,)

    def call(self, tensors):
        x, y = tensors
        a, b = self._axes(x.dim() - 1, y.dim() - 1)
        if self.normalize:  # Keras: x / max(||x||, 1e-7)
            x = x * torch.rsqrt(x.square().sum(a, keepdim=True)).clamp_max(1e7)
            y = y * torch.rsqrt(y.square().sum(b, keepdim=True)).clamp_max(1e7)
        xm, ym = x.movedim(a, -1), y.movedim(b, 1)  # (B, *x_rest, d), (B, d, *y_rest)
        n, d = x.shape[0], xm.shape[-1]
        out = torch.bmm(xm.reshape(n, -1, d), ym.reshape(n, d, -1))
        out = out.reshape(n, *xm.shape[1:-1], *ym.shape[2:])
        return out.unsqueeze(1) if out.dim() == 1 else out

    def get_config(self):
        axes = self.axes if isinstance(self.axes, int) else list(self.axes)
        return {"name": self.name, "axes": axes, "normalize": self.normalize}
