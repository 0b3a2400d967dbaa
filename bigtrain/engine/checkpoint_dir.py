"""The layout of a `checkpoint_dir` on disk (see bigtrain.engine.checkpoint for the whole
picture): `step-XXXXXXXX/` folders, each complete once it holds meta.json and DCP's
.metadata, and the `latest` pointer. Finding the checkpoint a run resumes from (the one
saved last), the JSON files written atomically (temporary file + rename), whether a folder
can be written, and deleting folders so that no half-deleted one looks complete. No
tensors here.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from bigtrain.engine.task import CheckpointConfig

POINTER = "latest"
META = "meta.json"
FORMAT = "bigtrain.checkpoint/1"
SAVE_INDEX = "save_index"  # meta.json: how many checkpoints the folder had seen saved before
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_FIX = ("; pass resume='never' (or another checkpoint_dir) to start fresh, or resume='<a "
        "step-XXXXXXXX folder>' to use an older checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, say); the message says why."""


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


def write_problem(directory: str, rank: int) -> str:
    """Why this process cannot create files in `directory` (created if missing); "" when
    it can."""
    probe = os.path.join(directory, f".write-test-rank{rank:05d}-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("bigtrain")
            f.flush()
            os.fsync(f.fileno())  # a full disk may refuse only the data, not the name
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    return ""


def write_failed(path: str, error: BaseException) -> CheckpointWriteError:
    """The error for a DCP save that failed on some rank (a full disk reads as torch's
    "unexpected pos 704 vs 598"), with what the folder has left and what still resumes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(error).__name__
    ranks = sorted(getattr(error, "failures", {}) or [])
    folder = os.path.dirname(path)
    try:
        free = f"; {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    return CheckpointWriteError(
        f"writing checkpoint {path} failed on rank(s) {ranks} ({cause}){free}. The checkpoints "
        f"saved before it are intact and fit(checkpoint_dir=...) resumes from the newest: free "
        f"space (a full disk is the usual cause; keep_last checkpoints are kept while the next "
        f"is written) or pass another checkpoint_dir")


def crashed_saves(directory: str) -> list[str]:
    """The `step-*.tmp` and `step-*.del` folders that saves or deletions left when they
    died: never a complete checkpoint."""
    return [os.path.join(directory, n) for n in os.listdir(directory)
            if n.endswith((".tmp", ".del")) and n.startswith("step-")]


def discard(paths: list[str]) -> None:
    """Delete checkpoint folders: each renamed to `.del` first, so that a deletion cut
    short never leaves a half-deleted folder that looks complete."""
    for path in paths:
        trash = path if path.endswith(".del") else path + ".del"
        if trash != path:
            os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def complete_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint in `directory`, in the order they were
    saved, oldest first (see `_saved_order`)."""
    return [(step, path) for _, step, path in _saved_order(directory)]


def next_save_index(directory: str) -> int:
    """The `save_index` of the next checkpoint saved into `directory`."""
    return 1 + max((index for index, _, _ in _saved_order(directory)), default=-1)


def _saved_order(directory: str) -> list[tuple[int, int, str]]:
    """(save index, step, path) of the complete checkpoints, oldest first.

    Why not by step alone: a run started afresh (resume='never', or from an older
    checkpoint) in a folder that holds a longer run's checkpoints saves smaller steps
    after them; by step, keep_last deleted the new run's checkpoints and resume='auto'
    took the old run's. Checkpoints written before `save_index` existed come first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _STEP_DIR.match(name)
        path = os.path.join(directory, name)
        if m and os.path.isfile(os.path.join(path, META)):
            found.append((_save_index(path), int(m.group(1)), path))
    return sorted(found)


def _save_index(path: str) -> int:
    """The checkpoint's place among the saves into its folder (-1: unknown or unreadable;
    `check_checkpoint` says what is wrong with it when it is chosen)."""
    try:
        with open(os.path.join(path, META), encoding="utf-8") as f:
            index = json.load(f).get(SAVE_INDEX, -1)
        return index if isinstance(index, int) else -1
    except (OSError, ValueError, AttributeError):
        return -1


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

    The `latest` pointer must be valid when present; a complete checkpoint saved after it
    (a crash between the rename and the pointer update) wins.
    """
    found = _saved_order(directory)
    pointer = os.path.join(directory, POINTER)
    if os.path.exists(pointer):
        target = read_json(pointer, f"the '{POINTER}' pointer of {directory}")
        path = os.path.join(directory, str(target.get("path", "")))
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f"the '{POINTER}' pointer of {directory} names a checkpoint "
                                  f"that cannot be used: {e}") from None
        saved = {p: (index, step) for index, step, p in found}
        if not found or found[-1][:2] <= saved.get(path, (-1, int(target.get("step", -1)))):
            return path
    return found[-1][2] if found else None


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
