"""SLURM's compressed host lists (`node[01-03,7],gpu-a[1-2]`) and task counts (`2(x3),1`).

Pure string work, the rules of `scontrol show hostnames`: a bracket holds comma-separated
numbers and ranges, a range keeps the zero padding of its first bound, and several brackets
in one name expand as their product (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1 r2n2).
"""
from __future__ import annotations

import re

_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_hostlist(hostlist: str) -> list[str]:
    """`node[01-03,7],login` -> ['node01', 'node02', 'node03', 'node7', 'login'].

    Raises ValueError naming the part it cannot read (an unclosed bracket, a reversed range).

    Example:
        >>> expand_hostlist("gpu[08-10]")
        ['gpu08', 'gpu09', 'gpu10']
    """
    hosts: list[str] = []
    for name in _split_top_level(hostlist.strip()):
        hosts.extend(_expand_name(name, hostlist))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: `a[1,2],b` -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"host list {text!r}: unbalanced or nested brackets")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"host list {text!r}: a bracket is not closed")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_name(name: str, whole: str) -> list[str]:
    """One name with zero or more bracket groups -> its hosts (the product of the groups)."""
    open_at = name.find("[")
    if open_at < 0:
        return [name]
    close_at = name.index("]", open_at)
    head, body, tail = name[:open_at], name[open_at + 1:close_at], name[close_at + 1:]
    rests = _expand_name(tail, whole) if tail else [""]
    return [f"{head}{number}{rest}" for number in _numbers(body, whole) for rest in rests]


def _numbers(body: str, whole: str) -> list[str]:
    """`01-03,7` -> ['01', '02', '03', '7'] (padding kept from each range's first bound)."""
    out = []
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"host list {whole!r}: cannot read {item!r} (expected N or N-M)")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"host list {whole!r}: range {item!r} runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM_TASKS_PER_NODE `2(x3),1` -> [2, 2, 2, 1] (tasks on each node, in node order).

    Example:
        >>> expand_tasks_per_node("8(x2)")
        [8, 8]
    """
    counts: list[int] = []
    for part in spec.split(","):
        m = _TASKS.match(part.strip())
        if not m:
            raise ValueError(f"tasks per node {spec!r}: cannot read {part!r} "
                             "(expected N or N(xK))")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts
