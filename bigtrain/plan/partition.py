"""Where to cut a chain of layers into pipeline stages: contiguous parts that minimise the
slowest part. The runtime (bigtrain.parallel.pipeline_partition) applies it to the layer
times each rank measures, the planner (bigtrain.plan.stages) to layer FLOPs before the run:
one rule, so the plan prices the cut the run makes.

Example:
    balanced_partition([1, 4, 4, 4, 4, 2], 3)                        # [2, 2, 2]
    device_aware_partition([[1.0] * 8, [3.0] * 8], stage_owner=[0, 1])   # [6, 2]
"""
from __future__ import annotations

from typing import Sequence


def balanced_partition(costs: Sequence[float], parts: int) -> list[int]:
    """Layer counts of `parts` contiguous, non-empty parts minimising the largest part cost.

    Among partitions with the same bottleneck it keeps the one with the smallest sum of
    squared part costs (`device_aware_partition` with one device owning every part).

    Args:
        costs: per-layer cost (any unit).
        parts: number of stages.

    Example:
        >>> balanced_partition([1, 4, 4, 4, 4, 2], 3)
        [2, 2, 2]
    """
    return device_aware_partition([costs], [0] * parts)


def device_aware_partition(cost_matrix: Sequence[Sequence[float]],
                           stage_owner: Sequence[int]) -> list[int]:
    """Layer counts per stage minimising the slowest stage, each stage priced on its owner.

    Stage s costs the sum of its layers' costs in row `stage_owner[s]` of `cost_matrix`
    (the layers as timed on that stage's device), so a device twice as fast takes about
    twice the layers. Dynamic programme over (first i layers, k stages), O(n^2 * stages);
    among partitions with the same bottleneck it keeps the smallest sum of squared stage
    costs (towards even parts).

    Args:
        cost_matrix: [owner x layer] costs (any unit), one row per device (pipeline rank).
        stage_owner: the row that prices each stage, in stage order; for P pipeline ranks
            with V stages each ("loop" placement) stage s belongs to s % P.

    Example:
        >>> device_aware_partition([[1.0] * 8, [3.0] * 8], [0, 1])   # rank 1 3x slower
        [6, 2]
        >>> device_aware_partition([[1.0] * 8, [3.0] * 8], [0, 1, 0, 1])
        [3, 1, 3, 1]
    """
    n, parts = len(cost_matrix[0]), len(stage_owner)
    _check_partition(cost_matrix, stage_owner)
    prefix = []  # prefix[o][i]: cost of the first i layers on owner o
    for row in cost_matrix:
        prefix.append([0.0])
        for c in row:
            prefix[-1].append(prefix[-1][-1] + float(c))
    inf = (float("inf"), float("inf"))
    # best[k][i]: (bottleneck, sum of squares) for the first i layers in k stages
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = (0.0, 0.0)
    for k in range(1, parts + 1):
        row = prefix[stage_owner[k - 1]]
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                if best[k - 1][j] == inf:
                    continue
                part = row[i] - row[j]
                cand = (max(best[k - 1][j][0], part), best[k - 1][j][1] + part * part)
                if cand < best[k][i]:
                    best[k][i], cut[k][i] = cand, j
    counts, i = [], n
    for k in range(parts, 0, -1):
        counts.append(i - cut[k][i])
        i = cut[k][i]
    return counts[::-1]


def _check_partition(cost_matrix, stage_owner) -> None:
    """ValueError unless every owner row prices every layer and the stages fit the layers."""
    n, parts = len(cost_matrix[0]), len(stage_owner)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} layers into {parts} non-empty stages; "
                         f"use between 1 and {n} stages")
    if any(len(row) != n for row in cost_matrix) or not all(
            0 <= o < len(cost_matrix) for o in stage_owner):
        raise ValueError(f"cost_matrix must hold one row of {n} layer costs per owner and "
                         f"stage_owner must index its {len(cost_matrix)} rows, got owners "
                         f"{list(stage_owner)}")
