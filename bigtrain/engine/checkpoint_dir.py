"""The layout of a `checkpoint_dir` on disk (see bigtrain.engine.checkpoint for the whole
picture): `step-XXXXXXXX/` folders, each complete once it holds meta.json and DCP's
.metadata, and the `latest` pointer. Finding the checkpoint a run resumes from (the one
saved last, or the one a save cut short left out of place), the files' checksums, the
writes that last through a power loss (fsync, rename, fsync of the folder), whether a
folder can be written, and deleting folders so that no half-deleted one looks complete.
No tensors here.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings

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
    sync(os.path.dirname(os.path.abspath(path)))


def sync(path: str) -> None:
    """fsync a file or a folder. Without it a power loss can keep a rename but not the data
    it names (an empty file under the final name); a folder's fsync makes the names created
    or renamed in it last. A folder that cannot be opened or synced (Windows, some network
    filesystems) is skipped: its renames are as durable as that system makes them."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise  # the data did not reach the disk (a full disk on NFS says so here)
    finally:
        os.close(fd)


def replace_synced(tmp: str, path: str) -> None:
    """Publish a written file or folder `tmp` under the name `path`: fsync it (a folder: its
    names; its files were synced as they were written), rename, fsync the folder holding
    both. One fsync per file: cheap next to writing it."""
    sync(tmp)
    os.replace(tmp, path)
    sync(os.path.dirname(os.path.abspath(path)))


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


def _tensor_files(path: str) -> list[str]:
    return [n for n in sorted(os.listdir(path)) if n.endswith(".distcp") or n == ".metadata"]


def file_digests(path: str, rank: int = 0, world: int = 1) -> dict[str, str]:
    """SHA-256 of the tensor files DCP wrote in checkpoint folder `path` (model and
    optimizer state alike; `state_digest` covers only the model's logical state): of every
    `world`-th file from the `rank`-th, so that ranks hash a folder in parallel."""
    return {name: _sha256(os.path.join(path, name))
            for name in _tensor_files(path)[rank::world]}


def damaged_files(path: str, saved: dict[str, str] | None, rank: int = 0,
                  world: int = 1) -> list[str]:
    """What differs between the folder's tensor files and the digests saved with them (of
    every `world`-th saved file from the `rank`-th)."""
    if not saved:
        return []  # written before file digests existed
    mine = sorted(saved)[rank::world]
    present = set(os.listdir(path))
    out = []
    for name in mine:
        now = _sha256(os.path.join(path, name)) if name in present else None
        if now != saved[name]:
            out.append(f"{name}: " + ("missing" if now is None else
                                      f"checksum {now[:16]}... but {saved[name][:16]}... "
                                      "when saved"))
    return out


def _sha256(file: str) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


def cut_short_save(directory: str) -> tuple[str, str | None] | None:
    """A save that replaces a checkpoint of the same step renames step-N to step-N.del, then
    step-N.tmp to step-N; cut short between the two, it leaves the `latest` pointer naming
    a missing folder beside its .tmp or .del. Returns (that missing folder, the one to use
    in its place: the new checkpoint when whole, else the old one, else None), or None when
    the folder shows no such save."""
    try:
        name = str(read_json(os.path.join(directory, POINTER), POINTER).get("path", ""))
    except (CheckpointError, AttributeError):
        return None  # no pointer, or a damaged one: find_checkpoint says so
    path = os.path.join(directory, name)
    if not _STEP_DIR.match(name) or os.path.exists(path):
        return None
    left = [path + end for end in (".tmp", ".del") if os.path.isdir(path + end)]
    return (path, next((p for p in left if _whole(p)), None)) if left else None


def _whole(path: str) -> bool:
    """Whether a .tmp or .del folder holds a whole checkpoint: meta.json (written last),
    DCP's .metadata, rank 0's RNG state and every tensor file meta.json lists (a deletion
    cut short removes whole files, never part of one)."""
    try:
        meta = check_checkpoint(path)
        listed = set(meta.get("files_sha256") or ())
    except (CheckpointError, AttributeError):
        return False
    return listed | {"rng-rank00000.json"} <= set(os.listdir(path))


def recover_cut_short_save(directory: str) -> None:
    """Rank 0, before the crashed saves are deleted: put the checkpoint that a save cut short
    left out of place (`cut_short_save`) back under its name, or, when neither folder is
    whole, point `latest` at the newest complete checkpoint (with a warning)."""
    cut = cut_short_save(directory)
    if cut is None:
        return
    missing, whole = cut
    if whole is not None:
        os.replace(whole, missing)
        sync(directory)
        return
    found = _saved_order(directory)
    if found:
        warnings.warn(_fallback_note(directory, missing, found[-1][2]), UserWarning, 2)
        write_json_atomic(os.path.join(directory, POINTER),
                          {"step": found[-1][1], "path": os.path.basename(found[-1][2])})


def _fallback_note(directory: str, missing: str, used: str) -> str:
    return (f"the '{POINTER}' pointer of {directory} names {os.path.basename(missing)}, which "
            f"a save cut short left missing, and neither its .tmp nor its .del folder is "
            f"whole: using {os.path.basename(used)}, the newest complete checkpoint")


def find_checkpoint(directory: str) -> str | None:
    """The newest complete checkpoint in `directory` (None when it holds none).

    The `latest` pointer must be valid when present; a complete checkpoint saved after it
    (a crash between the rename and the pointer update) wins. Where a save was cut short
    between the renames that replace a checkpoint of the same step, the whole folder it
    left out of place (`cut_short_save`; nothing is renamed here: a fit's rank 0 puts it
    back first, `recover_cut_short_save`).
    """
    found = _saved_order(directory)
    cut = cut_short_save(directory)
    if cut is not None and cut[1] is not None:
        return cut[1]
    if cut is not None and found:
        warnings.warn(_fallback_note(directory, cut[0], found[-1][2]), UserWarning, 2)
        return found[-1][2]
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
