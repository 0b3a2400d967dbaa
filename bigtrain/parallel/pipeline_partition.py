"""Cutting a chain of layers into pipeline stages of (nearly) equal cost.

Three steps, each usable alone:

1. `chain_layers(model)`: the model as an ordered list of (name, layer) that a pipeline may
   cut between. A GPT-like model exposes `embed`, `blocks` (ModuleList) and `head`; any
   `nn.Sequential` is cut between its children.
2. `measure_layer_costs(layers, sample)`: seconds of forward + backward per layer on one
   sample micro-batch (embedding and head cost differs from a block, so we time them).
3. `balanced_partition(costs, parts)`: contiguous parts minimising the slowest part's cost
   (the pipeline's step time is set by its slowest stage), ties broken towards even parts.

Example:
    layers = chain_layers(model)
    costs = measure_layer_costs(layers, torch.randint(0, 64, (2, 16)))
    counts = balanced_partition(costs, parts=2)       # e.g. [3, 3]: layers per stage
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn


def chain_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The cut-able layers of `model` in execution order, with their state-dict prefixes.

    Args:
        model: a GPT-like module (`embed`, `blocks`, `head`) or an `nn.Sequential`.

    Raises:
        TypeError: when the model is neither; the message says how to make it cut-able.
    """
    inner = getattr(model, "module", None)  # a thin wrapper (e.g. a Keras-style Model)
    if all(hasattr(model, a) for a in ("embed", "blocks", "head")):
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        return [("embed", model.embed), *blocks, ("head", model.head)]
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    chain = getattr(model, "chain", None)  # a Keras-style functional/Sequential graph
    if callable(chain) and chain() is not None:
        return [(f"layers.{layer.name}", layer) for layer in chain()]
    if isinstance(inner, nn.Module) and inner is not model:
        return [(f"module.{n}", m) for n, m in chain_layers(inner)]
    raise TypeError(
        f"cannot cut a {type(model).__name__} into pipeline stages: pass an nn.Sequential, "
        "or a module exposing `embed`, `blocks` (nn.ModuleList) and `head` whose forward is "
        "head(blocks(embed(x))) (like bigtrain.zoo.gpt.GPT)")


def block_count(layers: Sequence[tuple[str, nn.Module]]) -> int:
    """Layers that are transformer blocks (names "blocks.<i>"), or all layers of a chain."""
    n = sum(1 for name, _ in layers if name.split(".")[-2:-1] == ["blocks"])
    return n or len(layers)


def measure_layer_costs(layers: Sequence[tuple[str, nn.Module]], sample: torch.Tensor,
                        repeats: int = 3) -> list[float]:
    """Seconds of forward + backward per layer on `sample`, the best of `repeats` runs.

    Each layer is fed the previous layer's output (detached), and back-propagates a sum of
    its output, so the backward of a layer is timed without its neighbours. Gradients
    left on parameters are cleared.

    Args:
        layers: from `chain_layers`.
        sample: one micro-batch of model input.
        repeats: timing repeats per layer; the minimum is kept (least disturbed by noise).
    """
    costs, x = [], sample
    for _, layer in layers:
        best = float("inf")
        for _ in range(repeats):
            inp = x.detach().requires_grad_(x.is_floating_point())
            t0 = time.perf_counter()
            out = layer(inp)
            out.float().sum().backward()
            best = min(best, time.perf_counter() - t0)
        for p in layer.parameters():
            p.grad = None
        costs.append(best)
        x = out.detach()
    return costs


def parameter_costs(layers: Sequence[tuple[str, nn.Module]]) -> list[float]:
    """A stand-in cost when no sample input is known: parameters per layer (+1)."""
    return [float(sum(p.numel() for p in layer.parameters()) + 1) for _, layer in layers]


def balanced_partition(costs: Sequence[float], parts: int) -> list[int]:
    """Layer counts of `parts` contiguous, non-empty parts minimising the largest part cost.

    Dynamic programme over (first i layers, k parts), O(n^2 * parts); among partitions with
    the same bottleneck it keeps the one with the smallest sum of squared part costs.

    Args:
        costs: per-layer cost (any unit).
        parts: number of stages.

    Example:
        balanced_partition([1, 4, 4, 4, 4, 2], 3)   # [2, 2, 2]
    """
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} layers into {parts} non-empty stages; "
                         f"use between 1 and {n} stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = (float("inf"), float("inf"))
    # best[k][i]: (bottleneck, sum of squares) for the first i layers in k parts
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = (0.0, 0.0)
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                if best[k - 1][j] == inf:
                    continue
                part = prefix[i] - prefix[j]
                cand = (max(best[k - 1][j][0], part), best[k - 1][j][1] + part * part)
                if cand < best[k][i]:
                    best[k][i], cut[k][i] = cand, j
    counts, i = [], n
    for k in range(parts, 0, -1):
        counts.append(i - cut[k][i])
        i = cut[k][i]
    return counts[::-1]


def stage_costs(costs: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Sum of layer costs per stage for the layer `counts` of a partition."""
    out, start = [], 0
    for c in counts:
        out.append(float(sum(costs[start:start + c])))
        start += c
    return out
