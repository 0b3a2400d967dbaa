"""A torch optimizer instance's own param groups, kept through compile and the ranks.

`compile(optimizer=torch.optim.AdamW([{weights, lr 0.01}, {biases, lr 0.1}]))` or an
optimizer over part of the model (a head fine-tuned alone) must step as it would in a torch
loop. The groups are kept as positions in the model's `parameters()` (the same on every
rank for one process, ddp, zero2/zero3 and tensor), with each group's settings.

    groups = instance_groups(optimizer, list(model.parameters()))  # at compile; None: plain
    torch_groups = grouped(groups, "AdamW", list(module.parameters()))  # on a rank
"""
from __future__ import annotations

import inspect

import torch


def instance_groups(optimizer: torch.optim.Optimizer, params: list | None) -> list | None:
    """`optimizer`'s param groups as positions in the model's `params`, or None where one
    group holds every trainable parameter with the optimizer's defaults (the common case,
    which every strategy can rebuild)."""
    if params is None:
        return None
    where = {id(p): i for i, p in enumerate(params)}
    accepted = inspect.signature(type(optimizer)).parameters
    groups = []
    for group in optimizer.param_groups:
        strangers = [p for p in group["params"] if id(p) not in where]
        if strangers:
            raise ValueError(f"the {type(optimizer).__name__} given to compile holds "
                             f"{len(strangers)} parameters that are not this model's; build "
                             "it over model.parameters() (or a part of them)")
        settings = {k: (v.item() if torch.is_tensor(v) else v) for k, v in group.items()
                    if k != "params" and k in accepted}
        groups.append({"index": [where[id(p)] for p in group["params"]],
                       "count": len(params), **settings})
    trainable = {i for i, p in enumerate(params) if p.requires_grad}
    if (len(groups) == 1 and trainable <= set(groups[0]["index"])
            and all(groups[0][k] == v for k, v in optimizer.defaults.items()
                    if k in groups[0])):
        return None
    return groups


def grouped(groups: list, cls_name: str, params: list) -> list[dict]:
    """torch param groups over `params` (the model's, in `parameters()` order) as the
    instance the user compiled with had them (`groups`: what `instance_groups` gave)."""
    count = groups[0]["count"]
    if len(params) == 1 and count > 1:  # a probe of the class (runner, zero1, ps)
        return [{"params": params, **_settings(groups[0])}]
    if len(params) != count:
        raise ValueError(
            f"bigtrain: the {cls_name} given to compile has its own parameter groups (or "
            f"covers part of the model), but this strategy hands the optimizer {len(params)} "
            f"of the model's {count} parameters, so the groups cannot be kept. Train on one "
            "process or with strategy='ddp', 'zero2', 'zero3' or 'tensor', or compile with "
            f"the class (optimizer=torch.optim.{cls_name}) to give every parameter the same "
            "settings.")
    out = []
    for group in groups:
        chosen = [params[i] for i in group["index"] if params[i].requires_grad]
        if chosen:
            out.append({"params": chosen, **_settings(group)})
    return out


def _settings(group: dict) -> dict:
    return {k: v for k, v in group.items() if k not in ("index", "count")}
