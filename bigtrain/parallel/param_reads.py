"""Where code reads a sub-module's weights outside that sub-module's forward.

A strategy that shards a module's weights (FSDP2 units, tensor-parallel splits) has them
whole only inside that module's forward. A parent that reads them itself, as in a tied
output head `F.linear(h, self.emb.weight)`, meets a shard (or a DTensor among plain
tensors): such modules must stay whole (bigtrain.parallel.sharded.shard_units,
bigtrain.parallel.tensor_plan.tp_plan). Found by reading bytecode, not source: a class sent
to the ranks by value (defined in a script or a notebook) has no source there.

Example:
    outside_uses(model)    # [OutsideRead(user="", owner="emb", whole=False)]
    outside_reads(model)   # {"emb"}
"""
from __future__ import annotations

import dis
import functools
import inspect
import types
from typing import NamedTuple

from torch import nn


class OutsideRead(NamedTuple):
    """Module `user`'s forward (or a method it calls) reads a weight of its sub-module
    `owner` itself, outside `owner`'s forward: a parameter (`whole` False) or through a method
    or property of `owner` (`whole` True: any weight below `owner`). Names are qualified."""
    user: str
    owner: str
    whole: bool


def outside_uses(module: nn.Module) -> list[OutsideRead]:
    """Where code reads a sub-module's weights outside that sub-module's forward: e.g.
    `F.linear(h, self.emb.weight)` in the parent's forward (a tied output head). Found by
    reading the bytecode of the forward (and `call`) of each module whose class is not
    torch's or bigtrain's, and of the methods of `self` it reaches, for attribute chains
    `self.a.b.weight`. A sub-module handed to other code (`helper(self.emb)`) is not seen.

    Example:
        outside_uses(model)  # [OutsideRead(user="", owner="emb", whole=False)]
    """
    out = []
    for name, m in module.named_modules():
        for steps in _self_chains(type(m)):
            hit = _resolve(m, steps)
            if hit is not None:
                owner = f"{name}.{hit[0]}" if name else hit[0]
                out.append(OutsideRead(name, owner, hit[1]))
    return list(dict.fromkeys(out))  # a weight read in several places is one use


def outside_reads(module: nn.Module) -> set[str]:
    """Qualified names of the modules whose own parameters `outside_uses` reads."""
    names = [n for n, _ in module.named_modules()]
    out = set()
    for use in outside_uses(module):
        out.add(use.owner)
        if use.whole:
            out.update(n for n in names if n.startswith(use.owner + "."))
    return out


@functools.lru_cache(maxsize=None)
def _self_chains(cls: type) -> tuple:
    """The `self.x...` chains (tuples of ("attr", name) or ("item", constant or None)) in
    cls's forward/call and in the methods of `self` they reach."""
    todo, done, chains = ["forward", "call"], set(), []
    while todo:
        name = todo.pop()
        code = None if name in done else _user_code(cls, name)
        done.add(name)
        if code is None or not code.co_argcount:
            continue
        for steps in _chains(code, code.co_varnames[0]):
            if len(steps) == 1 and steps[0][0] == "attr":
                todo.append(steps[0][1])  # self.helper: read the helper too
            chains.append(steps)
    return tuple(chains)


def _user_code(cls: type, name: str) -> types.CodeType | None:
    """The code of method `name` of cls, unless bigtrain or torch outside torch.nn's layers
    defines it. bigtrain's layers read only their own weights; torch's built-in layers are
    read like user code, as some read a child's: MultiheadAttention applies
    `self.out_proj.weight` itself, TransformerEncoderLayer's inference fast path passes
    every child's weights to one kernel. Bytecode, not source: a class sent to the ranks
    by value (defined in a script or a notebook) has no source there."""
    owner = next((k for k in cls.__mro__ if name in vars(k)), None)
    fn = vars(owner)[name] if owner is not None else None
    if not inspect.isfunction(fn) or _skipped(owner.__module__):
        return None
    return fn.__code__


def _skipped(module_name: str) -> bool:
    """Whether code of this module is trusted to read no sub-module's weights."""
    if module_name.startswith("torch.nn.modules."):
        return False
    return module_name.startswith(("torch.", "bigtrain."))


def _chains(code: types.CodeType, self_name: str) -> list[tuple]:
    """Every `self.a[0].b...` chain of loads in `code` and the functions nested in it. A
    local bound to a chain (`first = self.layers[0]`) continues it where it is loaded
    (`first.norm1.weight`): TransformerEncoder reads its first layer's weights that way."""
    out, steps, aliases = [], None, {}
    ins = list(dis.get_instructions(code))
    i = 0
    while i < len(ins):
        op, nxt = ins[i], ins[i + 1] if i + 1 < len(ins) else None
        if steps is not None and op.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            steps.append(("attr", op.argval))
        elif steps and op.opname.startswith("LOAD_") and nxt is not None and (
                nxt.opname == "BINARY_SUBSCR" or nxt.argrepr == "[]"):
            const = op.opname in ("LOAD_CONST", "LOAD_SMALL_INT")
            steps.append(("item", op.argval if const else None))  # self.layers[0] / [i]
            i += 1
        else:
            if steps:
                out.append(tuple(steps))
                if op.opname in ("STORE_FAST", "STORE_DEREF"):
                    aliases[op.argval] = tuple(steps)
            steps = None
            if op.opname in _LOADS:
                steps = [] if op.argval == self_name else (
                    list(aliases[op.argval]) if op.argval in aliases else None)
        i += 1
    if steps:
        out.append(tuple(steps))
    for const in code.co_consts:  # lambdas, comprehensions, inner functions
        if isinstance(const, types.CodeType):
            out.extend(_chains(const, self_name))
    return out


#: instructions that load a local or closed-over name (CPython 3.10 - 3.14)
_LOADS = ("LOAD_FAST", "LOAD_DEREF", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_CLOSURE")
#: containers of weights that have no forward: whoever holds one reads its weights itself
_PARAM_CONTAINERS = (nn.ParameterList, nn.ParameterDict)


def _resolve(m: nn.Module, steps: tuple, path: tuple = ()) -> tuple[str, bool] | None:
    """(owner's name below m, whole) when the chain reads a sub-module's weight itself
    (an item of a ParameterList/ParameterDict, or the container itself, counts: it has no
    forward); None for m's own attributes, or a chain that ends on another sub-module
    (called: its forward runs; or handed on). `path`: m's name below the reader, when m is
    below it."""
    obj, path = m, list(path)
    for i, (kind, key) in enumerate(steps):
        if kind == "item":
            if path and isinstance(obj, _PARAM_CONTAINERS):  # self.pl[0]: a weight itself
                return ".".join(path), False
            if not path or not isinstance(obj, (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
                return None
            child = _item(obj, key)
            if child is None:  # an index known only at run time: read through any element
                rest = steps[i + 1:]
                hit = any(_resolve(c, rest, (*path, k)) for k, c in obj._modules.items())
                return (".".join(path), True) if hit else None
        elif key in obj._modules and obj._modules[key] is not None:
            child = obj._modules[key]
        elif not path or key in obj._buffers or key in vars(obj):
            return None  # m's own attribute, a buffer or a plain value
        else:  # a parameter, or a method/property that may read any weight below
            return ".".join(path), key not in obj._parameters
        path.append(next(k for k, v in obj._modules.items() if v is child))
        obj = child
    if path and isinstance(obj, _PARAM_CONTAINERS):  # iterated or handed on: its weights
        return ".".join(path), False
    return None


def _item(container: nn.Module, key):
    """container[key] when key is a constant that names a sub-module, else None."""
    try:
        child = container[key] if key is not None else None
    except (IndexError, KeyError, TypeError):
        return None
    return child if isinstance(child, nn.Module) else None
