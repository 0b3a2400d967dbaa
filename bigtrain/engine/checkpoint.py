"""Resumable checkpoints: model, optimizer, position in the data and RNG states, written
with torch.distributed.checkpoint (DCP) so a run saved on N ranks resumes on M ranks.

Layout of `checkpoint_dir`:

    step-00000040/          one complete checkpoint (after 40 optimizer steps)
        .metadata, *.distcp     DCP's files (tensors; see checkpoint_state for the keys)
        meta.json               position, optimizer name and hyperparameters, settings
        rng-rank00000.json      each rank's RNG states
    step-00000048.tmp/      a checkpoint being written (or left by a crash: ignored)
    latest                  {"step": 40, "path": "step-00000040"}

A save writes everything into `step-XXXXXXXX.tmp/`, then renames it to `step-XXXXXXXX/`
(atomic), and only then replaces the `latest` pointer (temporary file + rename). Every file
is fsynced before its folder is renamed, and the folders after, so a power loss never keeps
a name without its data. A crash at any point leaves the previous checkpoint complete and
loadable; one between the renames that replace a checkpoint of the same step is repaired
when the next fit starts (checkpoint_dir.recover_cut_short_save). The `keep_last` checkpoints
saved last are kept, and resume="auto" takes the one saved last: meta.json numbers the saves
into the folder ("save_index"), so a run started afresh where a longer run had saved larger
steps keeps and resumes its own checkpoints. All metadata is JSON.

    fit(x, y, epochs=3, checkpoint_dir="ckpt", checkpoint_every=100, keep_last=2)
    fit(x, y, epochs=3, checkpoint_dir="ckpt")     # run again: continues where it stopped
    export_safetensors("ckpt", "model.safetensors")  # full weights, one file
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from dataclasses import asdict, dataclass

import torch

from bigtrain.engine import checkpoint_state as cs
from bigtrain.engine.checkpoint_dir import (FORMAT, META, POINTER, CheckpointError,  # noqa: F401
                                            SAVE_INDEX, check_checkpoint,
                                            complete_checkpoints, crashed_saves,
                                            damaged_files, discard, file_digests,
                                            find_checkpoint, next_save_index, read_json,
                                            recover_cut_short_save, replace_synced,
                                            resolve_resume, step_dirname, write_failed,
                                            write_problem)
from bigtrain.engine.checkpoint_dir import write_json_atomic as _write_json_atomic
from bigtrain.engine.task import CheckpointConfig

DIGESTS = "sha256-rank"  # each rank's checksums of its share of the tensor files, while saving


def _json_value(value):
    """An epoch's log value as JSON: a float, or a list of floats for a metric with one value
    per class or threshold (F1Score(average=None), Precision(thresholds=[...]))."""
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
        return [float(v) for v in value]
    return float(value)


@dataclass(frozen=True)
class Position:
    """Where a run stands. Attributes: epoch (next epoch to run), batch (batches of that
    epoch already trained), step (optimizer steps done in all)."""
    epoch: int = 0
    batch: int = 0
    step: int = 0


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a full (unsharded) state dict: names, dtypes, shapes and bytes in key order.
    The same logical state gives the same digest whatever layout or world size held it."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-dim tensor (a learned temperature) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _dcp_metadata(path: str) -> dict:
    from bigtrain.engine.safe_dcp import SafeFileSystemReader
    try:
        return SafeFileSystemReader(path).read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(f"cannot read the DCP metadata of {path}: {e}") from None


def _dcp(op: str, state: dict, path: str, distributed: bool) -> None:
    """DCP's "save" or "load"; torch's checkpoint package (about 1 s to import, with DTensor)
    loads on the first checkpoint, not with every process that might write one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from bigtrain.engine.safe_dcp import SafeFileSystemReader, SafeLoadPlanner
    fn = dcp.load if op == "load" else dcp.save
    with warnings.catch_warnings():  # DCP warns that one process means "no_dist"
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        if fn is dcp.load:  # never unpickle what the folder holds (see safe_dcp)
            try:
                fn(state, checkpoint_id=path, storage_reader=SafeFileSystemReader(path),
                   planner=SafeLoadPlanner(), no_dist=not distributed)
            except (dcp.api.CheckpointException, EOFError, OSError, RuntimeError,
                    pickle.UnpicklingError) as e:
                first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"checkpoint {path} could not be read ({first}): its tensor "
                                      "files are damaged or incomplete; resume from an older "
                                      "checkpoint (resume='<step folder>') or start fresh "
                                      "(resume='never')") from None
        else:
            # a replicated tensor from rank 0 alone: by default DCP spreads them over the
            # ranks, and ranks may hold different copies (ddp's BatchNorm statistics: each
            # rank updates them on its own batch, and rank 0's are broadcast at the next step)
            planner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)
            writer = FileSystemWriter(path, sync_files=True)  # fsync every file it writes
            try:
                fn(state, checkpoint_id=path, storage_writer=writer, planner=planner,
                   no_dist=not distributed)
            except dcp.api.CheckpointException as e:  # a BaseException: user code misses it
                raise write_failed(path, e) from None


def export_safetensors(checkpoint: str, path: str) -> dict[str, tuple[int, ...]]:
    """Write the full, unsharded model weights of a checkpoint to one safetensors file.

    Runs in one process, whatever number of ranks wrote the checkpoint. The file loads with
    `model.load_weights(path)` (same metadata as `Model.save_weights`).

    Args:
        checkpoint: a checkpoint_dir (its newest checkpoint is used) or one
            `step-XXXXXXXX` folder.
        path: the .safetensors file to write.

    Returns:
        {parameter name: shape} of what was written.

    Example:
        >>> export_safetensors("ckpt", "model.safetensors")  # doctest: +SKIP
        {'layers.dense.linear.weight': (64, 1000), ...}
    """
    from safetensors.torch import save_file
    src = find_checkpoint(checkpoint) if not os.path.isfile(os.path.join(checkpoint, META)) \
        else checkpoint
    if src is None:
        raise CheckpointError(f"no complete checkpoint in {checkpoint}")
    meta = check_checkpoint(src)
    n = len(cs.MODEL)
    state = {k: torch.empty(tuple(md.size), dtype=md.properties.dtype)
             for k, md in _dcp_metadata(src).items() if k.startswith(cs.MODEL)}
    _dcp("load", state, src, distributed=False)
    weights = {k[n:]: v.contiguous() for k, v in state.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(weights, tmp, metadata={"format": "bigtrain.model/1", "kind": "weights",
                                      "step": str(meta["position"]["step"]),
                                      "order": json.dumps(list(weights))})
    replace_synced(tmp, path)
    return {k: tuple(v.shape) for k, v in weights.items()}


class Checkpointer:
    """Saves and restores one run's checkpoints; every rank makes the same calls.

    Args:
        config: where and when to save.
        strategy: the run's Strategy (after `setup`): its env says rank and world size.
        module, optimizer: what `setup_module` / `setup_optimizer` returned.
        run_info: settings that must match to resume mid-epoch (batch_size, samples, seed,
            shuffle) plus anything worth recording (strategy name), JSON-ready.
        record: the run's FitResult (its `history` and `epochs` grow as epochs end); each
            checkpoint keeps the History of every epoch done, this run's after those of
            the checkpoint it resumed from (`history()`).
    """

    def __init__(self, config: CheckpointConfig, strategy, module, optimizer, run_info: dict,
                 record=None):
        self.config, self.strategy = config, strategy
        self.module, self.optimizer = module, optimizer
        self.run_info = run_info
        self.record = record
        self.prior: dict = {"history": {}, "epochs": []}  # History of the resumed checkpoint
        self.env = strategy.env
        self.names = strategy.checkpoint_names(module)
        self.last_saved_step = -1
        # the epoch's running loss and metric sums, `Tally.state` (the loop sets it): a
        # mid-epoch checkpoint keeps them, all ranks' added, so a resumed epoch's logs
        # cover its batches from the first, as an uninterrupted run's do
        self.epoch_tally = None
        self.resumed_tally: list[float] | None = None  # that of the checkpoint resumed

    # ---- saving -------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise on every rank, before any training, when a rank cannot write into the
        checkpoint folder (every rank writes its own tensor files there): found at the
        first save, the error came after an epoch of work, or `checkpoint_every` steps."""
        directory = self.config.directory
        if self.env.is_main and os.path.isdir(directory):
            recover_cut_short_save(directory)  # before its .tmp and .del folders go
            discard(crashed_saves(directory))  # a save that died of a full disk left its files
        self.strategy.barrier()
        problem = write_problem(directory, self.env.rank)
        flag = torch.tensor([float(bool(problem))])
        self.strategy.all_reduce(flag, op="max")
        if problem or float(flag):
            where = f"rank {self.env.rank}: {problem}" if problem else \
                "another rank could not write it (see that rank's error)"
            raise CheckpointError(f"checkpoint_dir {directory} cannot be written ({where}); "
                                  "pass a folder every process can create files in (on a "
                                  "filesystem all machines share, for several), or leave "
                                  "checkpoint_dir out")

    def save(self, position: Position) -> str:
        """Write a checkpoint at `position` (all ranks); returns its folder."""
        directory = self.config.directory
        final = os.path.join(directory, step_dirname(position.step))
        tmp = final + ".tmp"
        if self.env.is_main:
            os.makedirs(directory, exist_ok=True)
            if os.path.exists(tmp):
                shutil.rmtree(tmp)  # left by a crashed save
        self.strategy.barrier()
        digest = state_digest(self.strategy.full_state_dict(self.module))  # before any write
        tally = None
        if position.batch and self.epoch_tally is not None:  # a collective, on every rank
            tally = self.strategy.all_reduce(self.epoch_tally()).tolist()
        live = cs.live_state(self.module, self.optimizer, self.names)
        _dcp("save", live.tensors, tmp, self.env.distributed)
        self.strategy.barrier()  # every rank's tensor files are in tmp
        self._write_rank_extras(tmp)
        self.strategy.barrier()  # and every rank's RNG state and file checksums
        if self.env.is_main:
            self._write_meta(tmp, position, live, digest, tally)
            self._publish(tmp, final, position.step)
        self.strategy.barrier()
        self.last_saved_step = position.step
        return final

    def _write_rank_extras(self, tmp: str) -> None:
        """This rank's RNG state, and the checksums of its share of the tensor files (the
        ranks hash a checkpoint in parallel; rank 0 gathers them into the metadata)."""
        rank, world = self.env.rank, self.env.world_size
        for name, data in ((f"rng-rank{rank:05d}.json", cs.rng_state()),
                           (f"{DIGESTS}{rank:05d}.json", file_digests(tmp, rank, world))):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())  # before _publish renames the folder

    def _write_meta(self, tmp: str, position: Position, live: cs.LiveState,
                    digest: str, tally: list[float] | None) -> None:
        files = {}
        for rank in range(self.env.world_size):
            share = os.path.join(tmp, f"{DIGESTS}{rank:05d}.json")
            files.update(read_json(share, "a rank's file checksums"))
            os.remove(share)
        meta = {"format": FORMAT, "position": asdict(position),
                "world_size": self.env.world_size,
                "optimizer": cs.optimizer_name(self.optimizer),
                "param_groups": cs.group_hyperparameters(live.groups),
                "run": self.run_info, "torch": torch.__version__,
                "model_sha256": digest, "files_sha256": dict(sorted(files.items())),
                "history": self.history(), "epoch_tally": tally,
                SAVE_INDEX: next_save_index(self.config.directory)}
        _write_json_atomic(os.path.join(tmp, META), meta)

    def _publish(self, tmp: str, final: str, step: int) -> None:
        """Rank 0: rename into place, move the pointer, drop the checkpoints saved first
        (the one just saved is always the last saved: `complete_checkpoints`)."""
        if os.path.exists(final):  # an older run's checkpoint of the same step
            shutil.rmtree(final + ".del", ignore_errors=True)
            os.replace(final, final + ".del")  # never a half-deleted folder that looks complete
        replace_synced(tmp, final)  # a cut between the two: recover_cut_short_save
        directory = self.config.directory
        _write_json_atomic(os.path.join(directory, POINTER),
                           {"step": step, "path": os.path.basename(final)})
        discard([path for _, path in complete_checkpoints(directory)[:-self.config.keep_last]]
                + crashed_saves(directory))

    def history(self) -> dict:
        """{"history": {key: [value per epoch]}, "epochs": [epoch indices]} of every epoch
        done: the resumed checkpoint's, then this run's (JSON-ready floats)."""
        hist = {k: list(v) for k, v in self.prior["history"].items()}
        epochs = list(self.prior["epochs"])
        if self.record is not None:
            for k, values in self.record.history.items():
                hist.setdefault(k, []).extend(_json_value(v) for v in values)
            epochs += [int(e) for e in self.record.epochs]
        return {"history": hist, "epochs": epochs}

    def after_step(self, epoch: int, batch: int, steps_per_epoch: int, step: int) -> None:
        """Called after every optimizer step (`batch` of `epoch` done, `step` in all)."""
        every = self.config.every_steps
        last_of_epoch = batch + 1 == steps_per_epoch
        if not every or step % every or (last_of_epoch and self.config.at_epoch_end):
            return  # the epoch-end save covers the last batch (after callbacks ran)
        pos = Position(epoch + 1, 0, step) if last_of_epoch else Position(epoch, batch + 1, step)
        self.save(pos)

    def after_epoch(self, epoch: int, step: int) -> None:
        if self.config.at_epoch_end and step != self.last_saved_step:
            self.save(Position(epoch + 1, 0, step))

    # ---- restoring ----------------------------------------------------------------------
    def restore(self) -> Position | None:
        """Load the checkpoint that `config.resume` selects; None when starting fresh."""
        path = resolve_resume(self.config)
        if path is None:
            return None
        meta = check_checkpoint(path)
        self._agree(damaged_files(path, meta.get("files_sha256"), self.env.rank,
                                  self.env.world_size), path, damaged=True)
        position = Position(**meta["position"])
        self._check_compatible(path, meta, position)
        saved = _dcp_metadata(path)
        live = cs.match_names(cs.live_state(self.module, self.optimizer, self.names), saved)
        cs.drop_unstepped(live, saved)  # parameters no gradient had reached: no state
        self._agree(cs.mismatches(live, saved), path)
        _dcp("load", live.tensors, path, self.env.distributed)
        cs.apply_loaded(self.module, self.optimizer, live, meta["param_groups"])
        self._verify_digest(path, meta.get("model_sha256"), live.renamed or {})
        rng = os.path.join(path, f"rng-rank{self.env.rank:05d}.json")
        if not os.path.exists(rng):  # more ranks than the saving run: rank 0's streams
            rng = os.path.join(path, "rng-rank00000.json")
        cs.set_rng_state(read_json(rng, "the RNG state file"))
        self.last_saved_step = position.step
        self.prior = meta.get("history") or {"history": {}, "epochs": []}
        self.resumed_tally = meta.get("epoch_tally") if position.batch else None
        return position

    def _verify_digest(self, path: str, saved: str | None, renamed: dict) -> None:
        """Recompute the checksum of the full logical model state after loading (under any
        world size or layout; `renamed`: our names -> the checkpoint's) and refuse a
        checkpoint whose state does not match it."""
        if saved is None:
            return  # written before checksums existed
        full = self.strategy.full_state_dict(self.module)
        digest = state_digest({renamed.get(k, k): v for k, v in full.items()})
        bad = self.env.is_main and digest != saved
        self._agree([f"the loaded model state has checksum {digest[:16]}..., but the checkpoint "
                     f"recorded {saved[:16]}... when it was saved: its files are damaged or "
                     "were mixed with another run's"] if bad else [], path, damaged=True)

    def _check_compatible(self, path: str, meta: dict, position: Position) -> None:
        saved, used = meta.get("optimizer"), cs.optimizer_name(self.optimizer)
        if saved != used:
            raise CheckpointError(f"checkpoint {path} was saved with optimizer {saved} but this "
                                  f"run uses {used}; compile with the {saved} optimizer to resume, "
                                  "or pass resume='never' (or a new checkpoint_dir) to start "
                                  "fresh")
        if position.batch == 0:
            return  # at an epoch boundary the data order does not depend on these
        old, new = meta.get("run", {}), self.run_info
        diff = [f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}"
                for k in ("batch_size", "samples", "seed", "shuffle", "steps_per_epoch")
                if old.get(k) != new.get(k)]
        if diff:
            raise CheckpointError(f"checkpoint {path} stopped mid-epoch (epoch {position.epoch + 1}"
                                  f", batch {position.batch}); resuming there needs the same data "
                                  f"order, but {'; '.join(diff)}. Use the same settings, or "
                                  "resume from an epoch-end checkpoint")

    def _agree(self, problems: list[str], path: str, damaged: bool = False) -> None:
        """Raise on every rank when any rank found a mismatch (none may wait in a load);
        `damaged`: the problems are files changed since the save, not another model."""
        flag = torch.tensor([float(bool(problems))])
        self.strategy.all_reduce(flag, op="max")
        if not problems and float(flag) == 0:
            return
        if not problems and damaged:
            raise CheckpointError(f"checkpoint {path} is damaged: another rank found its files "
                                  "changed after they were saved (see that rank's error). "
                                  "Delete that folder to resume from the checkpoint before it, "
                                  "or pass resume='never' (or a new checkpoint_dir)")
        if not problems:
            raise CheckpointError(f"another rank found checkpoint {path} incompatible with this "
                                  "model (see rank 0's error)")
        shown = "\n  ".join(problems[:20]) + ("" if len(problems) <= 20 else
                                              f"\n  ... and {len(problems) - 20} more")
        if damaged:
            raise CheckpointError(f"checkpoint {path} is damaged: its files changed after they "
                                  f"were saved (a disk or copy error):\n  {shown}\nDelete "
                                  "that folder to resume from the checkpoint before it, or pass "
                                  "resume='never' (or a new checkpoint_dir) to start fresh")
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer "
                              f"(from another model?):\n  {shown}\nBuild the same model to "
                              "resume, or pass resume='never' (or a new checkpoint_dir)")
