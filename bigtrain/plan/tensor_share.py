"""How much of a model tensor parallelism splits.

bigtrain's tensor parallelism (bigtrain.parallel.tensor_plan.tp_plan) splits only some
layers: a Linear that pairs column-wise with a row-wise partner and whose width divides by
the degree, or a layer that splits itself (conv channels, attention heads); the rest stays
whole on every rank. A column-wise Linear splits its weight and bias, a row-wise one its
weight only (its bias is added after the all-reduce, whole on every rank).

Per rank, with S of the Psi parameters split n ways: (Psi - S) + S / n parameters, and the
same share of gradients and optimizer state. S = 0 (nothing splits): tensor parallelism saves
nothing and every rank computes the whole model, so the planner does not offer it.

The plan layer sits below parallel/ and cannot run `tp_plan` itself: the caller passes its
styles (`plan(..., tensor_styles=tp_plan(module, n))`) for the exact figure. Without them
`splittable_params` bounds S from the layer widths: a Linear can split only if one of its
widths divides by n.

Example:
    from torch import nn
    from bigtrain.plan.tensor_share import split_params
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    split_params(model, {"0": "colwise", "2": "replicate"})   # 36: the first Linear
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

#: which parameters of a Linear each style splits ("split": a layer that shards itself)
_SPLIT_NAMES = {"colwise": ("weight", "bias"), "colwise_gather": ("weight", "bias"),
                "rowwise": ("weight",)}


def split_params(module: nn.Module, styles: Mapping[str, str]) -> int:
    """Parameters (elements) of `module` that a tensor plan splits.

    Args:
        module: the single-device model.
        styles: qualified layer name -> style, as bigtrain.parallel.tensor_plan.tp_plan
            returns them ("colwise", "colwise_gather", "rowwise", "replicate", "split").
    """
    split = 0
    for name, style in styles.items():
        layer = module.get_submodule(name)
        if style == "split":
            split += sum(p.numel() for p in layer.parameters())
        for attr in _SPLIT_NAMES.get(style, ()):
            p = getattr(layer, attr, None)
            split += p.numel() if p is not None else 0
    return split


def splittable_params(module: nn.Module, degree: int) -> int:
    """At most the parameters `degree`-way tensor parallelism can split, from widths alone:
    a Linear whose input or output width divides by `degree`, and a layer whose
    `tp_split(degree)` says it splits (bigtrain.parallel.layer_split.SplitsItself).
    0 means no layer can split.

    Example:
        >>> splittable_params(nn.Sequential(nn.Linear(1000, 512), nn.Linear(512, 10)), 3)
        0
    """
    total = 0
    for m in module.modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Linear):
            total += own if m.out_features % degree == 0 or m.in_features % degree == 0 else 0
        elif callable(getattr(m, "tp_split", None)) and m.tp_split(degree) is None:
            total += sum(p.numel() for p in m.parameters())
    return min(total, sum(p.numel() for p in module.parameters()))  # a Linear inside counted


def per_rank_params(n_params: float, split: float, degree: int) -> float:
    """Parameters one rank holds: the replicated ones whole, the split ones 1/degree.

    Example:
        >>> per_rank_params(1000, 600, 2)
        700.0
    """
    return float(n_params - split) + float(split) / degree


__all__ = ["per_rank_params", "split_params", "splittable_params"]
