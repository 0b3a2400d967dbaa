"""The layout of a `checkpoint_dir` on disk (see bigtrain.engine.checkpoint for the whole
picture): `step-XXXXXXXX/` folders, each complete once it holds meta.json and DCP's
.metadata, and the `latest` pointer. Finding the checkpoint a run resumes from, and the
JSON files written atomically (temporary file + rename). No tensors here.
"""
from __future__ import annotations

import json
import os
import re

from bigtrain.engine.task import CheckpointConfig

POINTER = "latest"
META = "meta.json"
FORMAT = "bigtrain.checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_FIX = ("; pass resume='never' (or another checkpoint_dir) to start fresh, or resume='<a "
        "step-XXXXXXXX folder>' to use an older checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def step_dirname(step: int) -> str:
    return f"step-{step:08d}"


def read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{what} is missing: {path}{_FIX}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{what} is unreadable or not JSON ({path}: {e}){_FIX}") from None


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def complete_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _STEP_DIR.match(name)
        path = os.path.join(directory, name)
        if m and os.path.isfile(os.path.join(path, META)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def check_checkpoint(path: str) -> dict:
    """The meta.json of the checkpoint at `path`, after checking it is complete."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint folder {path} does not exist{_FIX}")
    meta = read_json(os.path.join(path, META), f"the checkpoint's {META}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bigtrain checkpoint (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r}){_FIX}")
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise CheckpointError(f"checkpoint {path} has no DCP .metadata file (incomplete or "
                              f"damaged){_FIX}")
    return meta


def find_checkpoint(directory: str) -> str | None:
    """The newest complete checkpoint in `directory` (None when it holds none).

    The `latest` pointer must be valid when present; a complete checkpoint newer than it
    (a crash between the rename and the pointer update) wins.
    """
    found = complete_checkpoints(directory)
    pointer = os.path.join(directory, POINTER)
    if os.path.exists(pointer):
        target = read_json(pointer, f"the '{POINTER}' pointer of {directory}")
        path = os.path.join(directory, str(target.get("path", "")))
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"the '{POINTER}' pointer of {directory} names a checkpoint "
                                  f"that cannot be used: {e}") from None
        if not found or found[-1][0] <= int(target.get("step", -1)):
            return path
    return found[-1][1] if found else None


def resolve_resume(config: CheckpointConfig) -> str | None:
    """The checkpoint a run continues from (None: a fresh start)."""
    if config.resume == "never":
        return None
    if config.resume == "auto":
        return find_checkpoint(config.directory)
    if os.path.isfile(os.path.join(config.resume, POINTER)):  # a checkpoint_dir
        return find_checkpoint(config.resume)
    check_checkpoint(config.resume)
    return config.resume
