"""`Model.summary()`: layers, output shapes and parameter counts as Keras prints them, plus
the bytes training needs for parameters, gradients and the compiled optimizer's state."""
from __future__ import annotations

import torch

from bigtrain.api.functional import GraphModule
from bigtrain.api.layers.base import Layer
from bigtrain.api.layers.input_layer import InputLayer


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
    """Bytes as Keras's summary writes them: "124.00 B", "2.50 KB"."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def optimizer_weights(model) -> tuple[int, int] | None:
    """(count, bytes) of the optimizer's variables as Keras's summary counts them once the
    optimizer is built (here: after a fit, or a load, left it on the model): its
    per-parameter slots (Adam's two moments, SGD's momentum) plus `iterations` and
    `learning_rate`, and NAdam's one momentum product; None before that. torch's
    per-parameter step counters are Keras's one `iterations`, so they count once."""
    carry = getattr(model, "_carry", None)
    optimizer = getattr(carry, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "state"):
        return None
    count, nbytes, product = 2, 8, False  # iterations and learning_rate, 4 bytes each
    for state in optimizer.state.values():
        for key, value in state.items():
            if key == "mu_product":
                product = True
            elif isinstance(value, torch.Tensor) and value.dim() > 0:
                count += value.numel()
                nbytes += value.numel() * value.element_size()
    return count + product, nbytes + 4 * product


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
    if net is None:
        raise ValueError(f"model {model.name!r} is not built yet, so it has no weights to "
                         "count: build it (model.build((None, *sample_shape))) or call it "
                         "on a batch of data first")
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


def _graph_row(net: GraphModule, layer) -> tuple[tuple[str, str, int], object]:
    """One layer's row, as Keras prints it: once however often the layer is called, with
    its last call's output shape; a model called as a layer counts its layers' weights."""
    if isinstance(layer, InputLayer):
        return (f"{layer.name} (InputLayer)", f"(None, {', '.join(map(str, layer.shape))})",
                0), None
    out = net.outputs_of(layer)[0]
    shape = f"(None, {', '.join(map(str, out.shape))})"
    if isinstance(layer, Layer):
        return (f"{layer.name} ({type(layer).__name__})", shape, _layer_count(layer)), layer
    count = sum(_layer_count(leaf) for leaf in net.inner_layers(layer))
    return (f"{layer.name} ({layer.keras_kind})", shape, count), layer


def _layer_rows(model) -> list[tuple[tuple[str, str, int], object]]:
    """((name (type), output shape, parameters), layer) per row in Keras's order of the
    layers; an input's layer is None."""
    net = model.net
    if isinstance(net, GraphModule):
        return [_graph_row(net, layer) for layer in net.keras_layers]
    return [((f"{name} ({type(m).__name__})", "?", _layer_count(m)), m)
            for name, m in net.named_children()] or \
        [((type(net).__name__, "?", model.count_params()), net)]


def _rows(model) -> list[tuple[str, str, int]]:
    return [row for row, _ in _layer_rows(model)]


def _in_range(rows: list, layer_range) -> list:
    """Keras's `layer_range=(first, last)`: the rows from the first layer whose name matches
    the regex `first` to the last whose name matches `last`."""
    if layer_range is None:
        return rows
    import re
    if len(layer_range) != 2 or not all(isinstance(r, str) for r in layer_range):
        raise ValueError(f"layer_range must be two layer names (regexes), got {layer_range}")
    names = [row[0].split(" (")[0] for row, _ in rows]
    lower = [i for i, n in enumerate(names) if re.match(layer_range[0], n)]
    upper = [i for i, n in enumerate(names) if re.match(layer_range[1], n)]
    if not lower or not upper:
        raise ValueError(f"Passed layer_names do not match the layer names in the model. "
                         f"Received: {layer_range}")
    if min(lower) > max(upper):
        return rows[min(upper):max(lower) + 1]
    return rows[min(lower):max(upper) + 1]


def _trainable_mark(layer) -> str:
    """Keras's Trainable column: Y, N (frozen), or - for a layer without weights."""
    params = list(layer.parameters()) if layer is not None else []
    if not params:
        return "-"
    return "Y" if any(p.requires_grad for p in params) else "N"


def _widths(cells: list[list[str]], line_length, positions) -> list[int]:
    """Column widths: fitted to the cells, or Keras's `positions` (fractions of
    `line_length`, default 88, or column ends in characters) when given."""
    if positions is None and line_length is None:
        return [max(len(c[i]) for c in cells) + 2 for i in range(len(cells[0]))]
    n = len(cells[0])
    line_length = line_length or 88
    positions = positions or ([0.45, 0.80, 1.0] + [1.1] * (n - 3))[:n]
    if len(positions) != n:
        raise ValueError(f"positions needs {n} column ends, got {list(positions)}")
    ends = [int(p * line_length) if p <= 1 else int(p) for p in positions]
    return [max(4, end - start) for start, end in zip([0, *ends[:-1]], ends)]


def _cell(text: str, width: int, align: str) -> str:
    """`text` in `width` characters (cut with … when too long); align "<", ">" or "^"."""
    text = text if len(text) < width else text[:width - 2] + "…"
    return f"{text:{align}{width}}"


def summary_text(model, line_length=None, positions=None, show_trainable=False,
                 layer_range=None) -> str:
    """The summary as one string; the arguments as Keras's `Model.summary` takes them."""
    if model.net is None:
        return _unbuilt_text(model, line_length, positions)
    rows = _in_range(_layer_rows(model), layer_range)
    header = ["Layer (type)", "Output Shape", "Param #"] + (["Trainable"] if show_trainable else [])
    cells = [header] + [[a, b, f"{c:,}"] + ([_trainable_mark(layer)] if show_trainable else [])
                        for (a, b, c), layer in rows]
    widths = _widths(cells, line_length, positions)
    if positions is None and line_length is None:
        widths[2] = max(widths[2], 12)
    line = "─" * sum(widths)
    align = ["<", "<", ">", "^"]  # the Trainable column centred, as Keras's
    fmt = lambda c: "".join(_cell(t, w, a) for t, w, a in zip(c, widths, align))  # noqa: E731
    out = [f'Model: "{model.name}"', line, fmt(cells[0]), "═" * sum(widths)]
    out += [fmt(c) for c in cells[1:]]
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
    built = optimizer_weights(model)  # Keras counts a built optimizer's in the total
    n_opt, opt_bytes = built or (0, 0)
    out += [line,
            f" Total params: {total + n_opt:,} ({_human(wbytes + opt_bytes)})",
            f" Trainable params: {trainable:,} ({_human(tbytes)})",
            f" Non-trainable params: {total - trainable:,} ({_human(wbytes - tbytes)})"]
    if built is not None:
        out.append(f" Optimizer params: {n_opt:,} ({_human(opt_bytes)})")
    if spec is not None:
        out.append(f" Training memory with {spec.name or spec.cls.__name__}: parameters "
                   f"{_human(pbytes)} + gradients {_human(gbytes)} + optimizer state "
                   f"{_human(obytes)} = {_human(pbytes + gbytes + obytes)}")
    else:
        out.append(f" Training memory: parameters {_human(pbytes)} + gradients {_human(gbytes)}"
                   " (compile to include the optimizer state)")
    return "\n".join(out)


def _unbuilt_text(model, line_length, positions) -> str:
    """A Sequential without an input shape has no weights yet: its layers, shapes "?" and
    "0 (unbuilt)" parameters, as Keras prints it."""
    cells = [["Layer (type)", "Output Shape", "Param #"]] + [
        [f"{layer.name} ({type(layer).__name__})", "?", "0 (unbuilt)"] for layer in model.layers]
    widths = _widths(cells, line_length, positions)
    line = "─" * sum(widths)
    fmt = lambda c: "".join(_cell(t, w, a) for t, w, a in zip(c, widths, "<<>"))  # noqa: E731
    return "\n".join([f'Model: "{model.name}"', line, fmt(cells[0]), "═" * sum(widths),
                      *[fmt(c) for c in cells[1:]], line, " Total params: 0 (0.00 B)",
                      " Trainable params: 0 (0.00 B)", " Non-trainable params: 0 (0.00 B)"])


class Weight:
    """One weight as `model.weights` lists it: a live view of a torch parameter or buffer
    in Keras's layout, as a Keras variable reads.

    `shape`, `numpy()` and `np.asarray(w)` give Keras's layout (a Dense kernel (inputs,
    units)), `assign(value)` takes it; `value` is the torch tensor itself (torch's layout),
    e.g. to hand `[w.value for w in model.trainable_weights]` to a torch optimizer, as
    Keras's torch backend does.

    Example:
        kernel = model.get_layer("dense").weights[0]   # or model.weights[0]
        kernel.shape, kernel.numpy()
    """

    def __init__(self, path: str, tensor: torch.Tensor, to_keras, to_torch):
        self.path, self.value = path, tensor
        self._to_keras, self._to_torch = to_keras, to_torch

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def trainable(self) -> bool:
        """A parameter that receives gradients (not frozen); buffers never do."""
        return isinstance(self.value, torch.nn.Parameter) and self.value.requires_grad

    @property
    def shape(self) -> tuple:
        return tuple(self._to_keras(self.value.detach()).shape)

    @property
    def dtype(self) -> str:
        return str(self.value.dtype).split(".")[-1]

    def numpy(self):
        t = self._to_keras(self.value.detach().cpu())
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()  # numpy has no bf16

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def assign(self, value) -> None:
        """Write `value` (Keras's layout and shape) into the weight."""
        import numpy as np
        if tuple(np.shape(value)) != self.shape:
            raise ValueError(f"weight {self.path!r} has shape {self.shape}, got a value of "
                             f"shape {tuple(np.shape(value))}")
        new = self._to_torch(torch.as_tensor(np.asarray(value)))
        with torch.no_grad():
            self.value.copy_(new.to(self.value.dtype))

    def __repr__(self):
        return f"<Weight path={self.path}, shape={self.shape}, dtype={self.dtype}>"


#: Keras's names of a torch batch norm's weights (BatchNormalization keeps one inside)
_BATCH_NORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                     "running_var": "moving_variance"}


def _keras_name(layer, key: str) -> str:
    """A weight's Keras name inside its layer ("kernel", "bias"; a BatchNormalization's
    "gamma" ... "moving_variance"), else its torch key."""
    roles = layer.weight_roles() if isinstance(layer, Layer) else {}
    role = next((role for role, k in roles.items() if k == key), None)
    if role is not None:
        return role
    owner, _, leaf = key.rpartition(".")
    inner = layer.get_submodule(owner) if owner else layer
    if isinstance(inner, torch.nn.modules.batchnorm._NormBase) and leaf in _BATCH_NORM_NAMES:
        return _BATCH_NORM_NAMES[leaf]
    return key


def keras_weights(net) -> list[Weight]:
    """Every weight of `net` in Keras's order (that of `get_weights`), as `Weight` views."""
    from bigtrain.api.weights import weight_slots
    tensors = net.state_dict(keep_vars=True)
    out = []
    for key, to_keras, to_torch in weight_slots(net):
        if isinstance(net, GraphModule):  # "layers.<layer>.<key inside the layer>"
            _, layer_name, inner = key.split(".", 2)
            path = f"{layer_name}/{_keras_name(net.layers[layer_name], inner)}"
        else:
            path = key.replace(".", "/")
        out.append(Weight(path, tensors[key], to_keras, to_torch))
    return out
