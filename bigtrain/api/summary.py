"""`Model.summary()`: layers, output shapes and parameter counts as Keras prints them, plus
the bytes training needs for parameters, gradients and the compiled optimizer's state."""
from __future__ import annotations

import torch

from bigtrain.api.functional import GraphModule


def optimizer_state_factor(spec) -> float:
    """Optimizer-state elements per trainable parameter (Adam keeps two moments)."""
    if spec is None:
        return 0.0
    cls, kw = spec.cls, spec.kwargs
    if issubclass(cls, (torch.optim.Adam, torch.optim.AdamW)):
        return 3.0 if kw.get("amsgrad") else 2.0
    if issubclass(cls, torch.optim.SGD):
        return 1.0 if kw.get("momentum", 0) else 0.0
    if issubclass(cls, torch.optim.RMSprop):
        return 1.0 + (1.0 if kw.get("momentum", 0) else 0.0) + (1.0 if kw.get("centered") else 0.0)
    return 2.0  # unknown optimizers: assume Adam-like


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _rows(model) -> list[tuple[str, str, int]]:
    net = model.net
    if isinstance(net, GraphModule):
        rows = [(f"{t.node.layer.name} (InputLayer)", f"(None, {', '.join(map(str, t.shape))})", 0)
                for t in net.input_tensors]
        for node in net.nodes:
            layer, out = node.layer, node.outputs[0]
            n = sum(p.numel() for p in layer.parameters())
            rows.append((f"{layer.name} ({type(layer).__name__})",
                         f"(None, {', '.join(map(str, out.shape))})", n))
        return rows
    return [(f"{name} ({type(m).__name__})", "?", sum(p.numel() for p in m.parameters()))
            for name, m in net.named_children()] or [(type(net).__name__, "?", model.count_params())]


def summary_text(model) -> str:
    rows = _rows(model)
    widths = [max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2,
              max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2, 12]
    line = "─" * sum(widths)
    out = [f'Model: "{model.name}"', line,
           f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>{widths[2]}}",
           "═" * sum(widths)]
    out += [f"{a:<{widths[0]}}{b:<{widths[1]}}{c:>{widths[2]},}" for a, b, c in rows]
    params = list(model.net.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    pbytes = sum(p.numel() * p.element_size() for p in params)
    gbytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    spec = model.compiled.optimizer if model.compiled else None
    obytes = optimizer_state_factor(spec) * sum(p.numel() * 4 for p in params if p.requires_grad)
    out += [line,
            f" Total params: {total:,} ({_human(pbytes)})",
            f" Trainable params: {trainable:,}",
            f" Non-trainable params: {total - trainable:,}"]
    if spec is not None:
        out.append(f" Training memory with {spec.name or spec.cls.__name__}: parameters "
                   f"{_human(pbytes)} + gradients {_human(gbytes)} + optimizer state "
                   f"{_human(obytes)} = {_human(pbytes + gbytes + obytes)}")
    else:
        out.append(f" Training memory: parameters {_human(pbytes)} + gradients {_human(gbytes)}"
                   " (compile to include the optimizer state)")
    return "\n".join(out)
