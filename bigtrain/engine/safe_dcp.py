"""Reading torch.distributed.checkpoint folders without unpickling arbitrary objects.

DCP stores its `.metadata` with plain pickle and loads non-tensor items with
`torch.load(weights_only=False)`: a checkpoint folder from an untrusted source could run
code on load. bigtrain loads through `SafeFileSystemReader` (metadata unpickled with an
allow-list: DCP's own metadata dataclasses, torch dtypes/sizes, plain containers) and
`SafeLoadPlanner` (non-tensor items through `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import io
import pickle

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint._traverse import set_element

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
                "torch.distributed.checkpoint.planner")
_BUILTINS = {("builtins", n) for n in ("set", "frozenset", "slice", "complex")} | \
    {("collections", "OrderedDict"), ("torch", "Size"), ("pathlib", "PosixPath"),
     ("pathlib", "WindowsPath"), ("torch.serialization", "_get_layout")}  # layout by name


class RefusedPickle(pickle.UnpicklingError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _BUILTINS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None),
                                            (torch.dtype, torch.memory_format, torch.layout)):
            return getattr(torch, name)
        if module in _DCP_MODULES:
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # DCP's dataclasses and enums, never functions
                return obj
        raise RefusedPickle(f"checkpoint metadata refers to {module}.{name}, which a DCP "
                            "checkpoint never contains: refusing to load it")


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata is unpickled with an allow-list."""

    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that loads non-tensor items with `weights_only=True`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
