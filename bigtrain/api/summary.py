"""`Model.summary()`: layers, output shapes and parameter counts as Keras prints them, plus
the bytes training needs for parameters, gradients and the compiled optimizer's state."""
from __future__ import annotations

import torch

from bigtrain.api.functional import GraphModule
from bigtrain.api.layers.base import Layer


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


def _counted_buffers(module) -> list[torch.Tensor]:
    """The buffers Keras lists among a layer's weights (BatchNormalization's moving mean and
    variance), not torch's bookkeeping (num_batches_tracked)."""
    custom = module.keras_weights() if isinstance(module, Layer) else None
    keys = [key for key, _, _ in custom] if custom is not None else \
        [key for key in module.state_dict() if not key.endswith("num_batches_tracked")]
    buffers = dict(module.named_buffers())
    return [buffers[key] for key in keys if key in buffers]


def model_weights(model) -> list[tuple[torch.Tensor, bool]]:
    """(tensor, trainable) for every weight Keras counts: each parameter once (a frozen one
    is non-trainable) and the Keras-visible buffers, which are non-trainable.

    Example:
        total = sum(w.numel() for w, _ in model_weights(model))  # model.count_params()
    """
    net = model.net
    parts = list(net.layers.values()) if isinstance(net, GraphModule) else [net]
    out = [(p, p.requires_grad) for p in net.parameters()]
    seen = {id(p) for p, _ in out}
    for part in parts:
        for b in _counted_buffers(part):
            if id(b) not in seen:
                seen.add(id(b))
                out.append((b, False))
    return out


def _layer_count(module) -> int:
    """One layer's weights as Keras counts them: parameters and Keras-visible buffers."""
    return sum(p.numel() for p in module.parameters()) + \
        sum(b.numel() for b in _counted_buffers(module))


def _rows(model) -> list[tuple[str, str, int]]:
    net = model.net
    if isinstance(net, GraphModule):
        rows = [(f"{t.node.layer.name} (InputLayer)", f"(None, {', '.join(map(str, t.shape))})", 0)
                for t in net.input_tensors]
        for node in net.nodes:
            layer, out = node.layer, node.outputs[0]
            n = _layer_count(layer)
            rows.append((f"{layer.name} ({type(layer).__name__})",
                         f"(None, {', '.join(map(str, out.shape))})", n))
        return rows
    return [(f"{name} ({type(m).__name__})", "?", _layer_count(m))
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
    weights = model_weights(model)
    total = sum(w.numel() for w, _ in weights)
    trainable = sum(w.numel() for w, t in weights if t)
    wbytes = sum(w.numel() * w.element_size() for w, _ in weights)
    tbytes = sum(w.numel() * w.element_size() for w, t in weights if t)
    params = list(model.net.parameters())  # the training memory: parameters only
    pbytes = sum(p.numel() * p.element_size() for p in params)
    gbytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    spec = model.compiled.optimizer if model.compiled else None
    obytes = optimizer_state_factor(spec) * sum(p.numel() * 4 for p in params if p.requires_grad)
    out += [line,
            f" Total params: {total:,} ({_human(wbytes)})",
            f" Trainable params: {trainable:,} ({_human(tbytes)})",
            f" Non-trainable params: {total - trainable:,} ({_human(wbytes - tbytes)})"]
    if spec is not None:
        out.append(f" Training memory with {spec.name or spec.cls.__name__}: parameters "
                   f"{_human(pbytes)} + gradients {_human(gbytes)} + optimizer state "
                   f"{_human(obytes)} = {_human(pbytes + gbytes + obytes)}")
    else:
        out.append(f" Training memory: parameters {_human(pbytes)} + gradients {_human(gbytes)}"
                   " (compile to include the optimizer state)")
    return "\n".join(out)
