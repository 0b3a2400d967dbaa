"""What Keras's configurable weight objects share (initializers, regularizers,
constraints): a config dict, a repr from it, and lookup by name, class, instance or config.

Example:
    class L2(KerasObject): ...
    reg = lookup("l2", KerasObject, {"l2": L2}, "regularizer", "give 'l1' or 'l2'")
"""
from __future__ import annotations


class KerasObject:
    """Base class: `get_config()` holds the constructor arguments (JSON-able)."""

    def get_config(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def lookup(identifier, base: type, by_name: dict, what: str, valid: str):
    """`identifier` as an instance of `base`: an instance as is, a class or a Keras name
    (keys of `by_name`, lower case) built with defaults, a {"class_name", "config"} dict
    built with its config. `what` and `valid` word the error for anything else."""
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, base):
        return identifier()
    if _is_keras(identifier):  # keras.regularizers.L2(0.1): its twin, from its config
        identifier = {"class_name": type(identifier).__name__,
                      "config": identifier.get_config()}
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = str(identifier["class_name"]).lower()
        cls = by_name.get(name) or by_name.get(name.replace("_", ""))
        if cls is not None:
            return cls(**_arguments(cls, identifier.get("config") or {}, what))
    if isinstance(identifier, str) and identifier.lower() in by_name:
        return by_name[identifier.lower()]()
    raise ValueError(f"unknown {what} {identifier!r}; {valid}")


def _is_keras(obj) -> bool:
    """A Keras initializer, regularizer or constraint object (not a class)."""
    return not isinstance(obj, type) and type(obj).__module__.split(".")[0] == "keras" \
        and callable(getattr(obj, "get_config", None))


def _arguments(cls: type, config: dict, what: str) -> dict:
    """`config` as `cls`'s constructor arguments: a newer Keras's extra keys left at None
    (VarianceScaling's input_axes/output_axes) are dropped, any other unknown one refused."""
    import inspect
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(config)
    unknown = [k for k, v in config.items() if k not in params and v is not None]
    if unknown:
        raise ValueError(f"{what} {cls.__name__} with {unknown[0]}={config[unknown[0]]!r} is "
                         f"not supported by bigtrain's {cls.__name__} (it takes "
                         f"{', '.join(k for k in params if k != 'self')}); drop {unknown[0]}")
    return {k: v for k, v in config.items() if k in params}


def serialize(obj: KerasObject | None) -> dict | None:
    """The config dict `lookup` turns back into `obj` (Model.save); None for None."""
    return None if obj is None else {"class_name": type(obj).__name__,
                                     "config": obj.get_config()}
