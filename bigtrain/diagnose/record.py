"""The run record: what one training run did and measured, saved as `run.json`.

The training engine fills a RunRecord as it goes and writes it into the run directory at the
end of every epoch; `bigtrain doctor` (check_run) and the report (render_report) read it.
The format is the same for every strategy. Times are seconds, memory is bytes, throughput is
per second over the whole job (all ranks).

Example:
    rec = RunRecord(strategy="ddp", world_size=2, threads_per_rank=1, optimizer="adam",
                    precision="32", batch_size=64, epochs=3)
    rec.history["loss"] = [0.9, 0.5, 0.4]
    rec.save("runs/mnist")                      # runs/mnist/run.json, written atomically
    again = RunRecord.load("runs/mnist")
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD_FILE = "run.json"
SCHEMA_VERSION = 1


@dataclass
class StepTimes:
    """Mean seconds per optimizer step spent in each phase (rank 0, or the mean of ranks).

    Attributes:
        data: waiting for the next batch (loading, collation, host->device copy).
        forward: forward pass and loss.
        backward: backward pass, excluding communication that was not overlapped.
        optimizer: optimizer step (and gradient clipping / unscaling).
        comm_exposed: communication the step waited for (not hidden behind compute).
        other: step time not split into the phases above: a pipeline schedule's idle time
            (bubble and waits for neighbouring stages) and per-step bookkeeping.
    """
    data: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0
    comm_exposed: float = 0.0
    other: float = 0.0

    @property
    def total(self) -> float:
        return (self.data + self.forward + self.backward + self.optimizer + self.comm_exposed
                + self.other)

    def share(self, phase: str) -> float:
        """Fraction of the step spent in `phase` (0 when nothing was timed)."""
        return getattr(self, phase) / self.total if self.total > 0 else 0.0


@dataclass
class RankMemory:
    """Bytes one rank held.

    Attributes:
        params: parameter bytes on this rank (its shard for sharded strategies).
        grads: gradient bytes.
        optimizer: optimizer-state bytes.
        activations_peak: peak activation bytes, when measured (None otherwise).
        rss: resident set size of the process at the end of the epoch, when measured.
    """
    params: int = 0
    grads: int = 0
    optimizer: int = 0
    activations_peak: int | None = None
    rss: int | None = None


def _finite_or_text(x):
    """JSON has no NaN/Infinity: store them as the strings float() reads back."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _finite_or_text(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_text(v) for v in x]
    return x


def _as_float(x):
    return float(x) if isinstance(x, str) else x


def _floats_back(x):
    """Undo `_finite_or_text` inside nested lists and dicts (strings that name a float)."""
    if isinstance(x, str) and x in ("NaN", "Infinity", "-Infinity"):
        return float(x)
    if isinstance(x, dict):
        return {k: _floats_back(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_floats_back(v) for v in x]
    return x


@dataclass
class RunRecord:
    """Everything the doctor and the report need about one run.

    Attributes:
        strategy: registry name of the strategy ("single", "ddp", "zero3", "pipeline", ...).
        world_size: processes in the job.
        threads_per_rank: torch intra-op threads of each rank.
        optimizer: optimizer name ("adam", "sgd", ...).
        precision: "32", "bf16-mixed" or "16-mixed".
        batch_size: global samples per optimizer step.
        epochs: epochs completed.
        optimizer_fused: whether the optimizer ran its fused kernel (None: unknown).
        local_world_size: ranks on the busiest host.
        cpu_cores: cores of that host (None: unknown).
        device: "cpu" or "cuda".
        microbatches: micro-batches per step (accumulation or pipeline schedule).
        pipeline_stages: stages of a pipeline strategy (None otherwise).
        num_params: parameters of the model.
        num_classes: classes of a classification task (None otherwise).
        samples_per_s: training samples per second, whole job.
        tokens_per_s: tokens per second for sequence models.
        mfu: model FLOPs utilisation, 0..1, against `peak_flops`.
        peak_flops: the peak FLOP/s of the whole job that `mfu` divides by.
        step_time: mean per-step breakdown.
        pipeline_bubble: measured idle fraction of the pipeline schedule, 0..1.
        memory: rank -> RankMemory.
        rank_step_times: mean seconds per step of each training rank's own work (data,
            forward, backward, optimizer; waits for other ranks left out), by rank.
        rank_step_samples: each rank's own work (data, forward and optimizer seconds) in
            up to 64 timed steps spread over the run, the same steps on every rank, by rank
            as rank_step_times (bigtrain.diagnose.step_timer.StepSamples); empty on one
            process. The doctor's straggler check reads whether a rank was slow step after
            step or only on average.
        history: Keras-style per-epoch metrics ("loss", "val_loss", "accuracy", ...) of the
            epochs that finished.
        stop: how the run ended: {"reason": "completed" | "nan_loss" | "exception" |
            "interrupted" | "rank_lost" | "running", "epoch": 0-based epoch it stopped in,
            "step": 0-based step of that epoch (None when unknown), "message": text}.
            "running" is what a record written at an epoch end says until the fit ends, so
            a process killed outright leaves it behind.
        step_losses: training loss of every step of the last (possibly partial) epoch,
            rank 0's micro-batches.
        layer_health: per-layer gradient figures sampled every `every` optimizer steps
            (bigtrain.diagnose.grad_health.GradHealth.summary): {"every": k, "steps":
            [global step], "lr": [...], "layers": {name: {"grad": [...], "weight": [...],
            "update": [...], "dead_units": share or None}}, "start_rows": {name: RMS of
            the unit weight-vector norms at the fit's first step}}.
        data_profile: what the data alone says, measured on a sample at the end of the fit
            (bigtrain.diagnose.profile.profile_data): scale, labels, the majority-class and
            linear-model baselines, likely label errors.
        script: absolute path of the training script that ran the fit (None: not a .py
            file, e.g. a notebook); `bigtrain doctor RUN_DIR --lr-test` reruns its start.
        script_args: the script's command-line arguments.
        extra: anything else worth keeping (free form, JSON-serialisable).
        version: schema version of this record.
    """
    strategy: str
    world_size: int
    threads_per_rank: int
    optimizer: str
    precision: str
    batch_size: int
    epochs: int = 0
    optimizer_fused: bool | None = None
    local_world_size: int = 1
    cpu_cores: int | None = None
    device: str = "cpu"
    microbatches: int = 1
    pipeline_stages: int | None = None
    num_params: int | None = None
    num_classes: int | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_flops: float | None = None
    step_time: StepTimes = field(default_factory=StepTimes)
    pipeline_bubble: float | None = None
    memory: dict[int, RankMemory] = field(default_factory=dict)
    rank_step_times: list[float] = field(default_factory=list)
    rank_step_samples: list[list[float]] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)
    stop: dict | None = None
    step_losses: list[float] = field(default_factory=list)
    layer_health: dict = field(default_factory=dict)
    data_profile: dict = field(default_factory=dict)
    script: str | None = None
    script_args: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.world_size < 1 or self.threads_per_rank < 1 or self.batch_size < 1:
            raise ValueError(f"world_size, threads_per_rank and batch_size must be >= 1, got "
                             f"{self.world_size}, {self.threads_per_rank}, {self.batch_size}")
        if self.mfu is not None and not 0.0 <= self.mfu <= 1.5:
            raise ValueError(f"mfu is a fraction (0..1), got {self.mfu}; divide percent by 100")
        if self.pipeline_bubble is not None and not 0.0 <= self.pipeline_bubble <= 1.0:
            raise ValueError(f"pipeline_bubble is a fraction (0..1), got {self.pipeline_bubble}")

    # ---- JSON ---------------------------------------------------------------------------
    def to_json(self) -> str:
        """Strict JSON text (non-finite floats become "NaN"/"Infinity" strings)."""
        data = asdict(self)
        data["memory"] = {str(k): v for k, v in data["memory"].items()}
        return json.dumps(_finite_or_text(data), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        """Parse what `to_json` wrote."""
        data = json.loads(text)
        data["step_time"] = StepTimes(**data.get("step_time", {}))
        data["memory"] = {int(k): RankMemory(**v) for k, v in data.get("memory", {}).items()}
        data["history"] = {k: [_as_float(v) for v in vals]
                           for k, vals in data.get("history", {}).items()}
        data["rank_step_times"] = [_as_float(v) for v in data.get("rank_step_times", [])]
        for key in ("step_losses", "layer_health", "data_profile", "rank_step_samples"):
            if key in data:
                data[key] = _floats_back(data[key])
        for key in ("samples_per_s", "tokens_per_s", "mfu", "peak_flops", "pipeline_bubble"):
            data[key] = _as_float(data.get(key))
        return cls(**data)

    def save(self, run_dir) -> Path:
        """Write `run_dir/run.json` atomically (temp file + os.replace); returns the path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / RECORD_FILE
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".run.", suffix=".json.tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, run_dir) -> "RunRecord":
        """Read `run_dir/run.json` (or a path to the file itself)."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / RECORD_FILE
        if not path.exists():
            raise FileNotFoundError(f"no run record at {path}; train with a run directory "
                                    "(fit(..., run_dir=...)) to create one")
        return cls.from_json(path.read_text())
