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
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = str(identifier["class_name"]).lower()
        cls = by_name.get(name) or by_name.get(name.replace("_", ""))
        if cls is not None:
            return cls(**identifier.get("config", {}))
    if isinstance(identifier, str) and identifier.lower() in by_name:
        return by_name[identifier.lower()]()
    raise ValueError(f"unknown {what} {identifier!r}; {valid}")


def serialize(obj: KerasObject | None) -> dict | None:
    """The config dict `lookup` turns back into `obj` (Model.save); None for None."""
    return None if obj is None else {"class_name": type(obj).__name__,
                                     "config": obj.get_config()}
