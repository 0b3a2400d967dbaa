"""How a plan reads: byte/second formatting, the one-sentence reasons, the table.

Bytes use the decimal convention of the ZeRO paper (1 GB = 1e9 bytes).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from bigtrain.plan.planner import Plan, StrategyEstimate


def format_bytes(n: float) -> str:
    """Decimal units: 1.9 GB, 12.0 MB, 512 B.

    Example:
        >>> format_bytes(1.875e9)
        '1.9 GB'
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_seconds(s: float) -> str:
    """Seconds with a unit and 3 significant digits: 2.5 h, 1.23 s, 45.6 ms, 7.8 us."""
    if s >= 3600.0:
        return f"{s / 3600.0:.3g} h"
    if s >= 1.0:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _dominant_time(e: "StrategyEstimate") -> str:
    """Name and share of the largest part of the step time."""
    t = e.time
    parts = {"compute": t.compute, "communication": t.comm, "pipeline bubble": t.bubble,
             "optimizer update": t.update,
             "host offload copies": t.offload}
    name = max(parts, key=parts.get)
    share = parts[name] / t.total if t.total else 0.0
    return f"{share:.0%} of it is {name}"


def _largest_memory(e: "StrategyEstimate") -> str:
    m = e.memory
    parts = {"parameters": m.params, "gradients": m.grads, "optimizer state": m.optimizer,
             "activations": m.activations, "communication buffers": m.comm_buffers}
    name = max(parts, key=parts.get)
    return f"the largest part is {name} ({format_bytes(parts[name])})"


def reason_for(e: "StrategyEstimate", ranked: list["StrategyEstimate"], usable: float,
               host: float) -> str:
    """One sentence: why `e` ranks where it does among `ranked` (already sorted).

    Args:
        e: the estimate to explain.
        ranked: all estimates, best first.
        usable: device bytes a rank may fill.
        host: host bytes a rank may fill with offloaded state.
    """
    role = f" on the {e.memory.role} rank" if e.memory.role else ""
    mem = f"{format_bytes(e.memory.device_total)}{role} of {format_bytes(usable)} usable"
    if not e.fits and e.memory.offloaded_host > host:
        return (f"Does not fit: offloads {format_bytes(e.memory.offloaded_host)} per rank to "
                f"host memory, {format_bytes(host)} available.")
    if not e.fits:
        return f"Does not fit: needs {mem}; {_largest_memory(e)}."
    best = next(x for x in ranked if x.fits)
    step = f"{format_seconds(e.time.total)} per step"
    if e is best:
        return f"Fits ({mem}) and is the fastest estimate at {step}; {_dominant_time(e)}."
    ratio = e.time.total / best.time.total if best.time.total else 1.0
    return (f"Fits ({mem}) but {step} is {ratio:.2g}x the best ({best.strategy}); "
            f"{_dominant_time(e)}.")


_COLUMNS = ("#", "strategy", "fits", "params", "grads", "optimizer", "activations",
            "buffers", "host", "device total", "step time", "why")


def _row(i: int, e: "StrategyEstimate") -> list[str]:
    m = e.memory
    return [str(i), e.strategy, "yes" if e.fits else "no", format_bytes(m.params),
            format_bytes(m.grads), format_bytes(m.optimizer), format_bytes(m.activations),
            format_bytes(m.comm_buffers), format_bytes(m.offloaded_host),
            format_bytes(m.device_total), format_seconds(e.time.total), e.reason]


def plan_table(p: "Plan", markdown: bool = False):
    """Render the ranked estimates as a rich Table, or as a Markdown string.

    Args:
        p: the plan.
        markdown: return a Markdown string (with notes and skipped strategies) instead.
    """
    rows = [_row(i + 1, e) for i, e in enumerate(p.estimates)]
    if not markdown:
        table = Table(title=f"plan: {p.profile.n_params:,} parameters, per-rank memory "
                            f"{format_bytes(p.usable_memory)} usable")
        for c in _COLUMNS:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*r)
        return table
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- skipped {k}: {v}" for k, v in p.skipped.items()]
    lines += [f"- note: {n}" for n in p.notes]
    return "\n".join(lines)
