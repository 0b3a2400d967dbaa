"""Pipeline parallelism on torch.distributed.pipelining, with manual stage splitting.

The model's layer chain (`chain_layers`: embed, blocks..., head of a GPT, or the children
of an nn.Sequential) is cut into P * V contiguous stages, V per rank, balanced by measured
per-layer forward+backward time (`pipeline_partition`) or by `split=[layers per stage]`.
The stages run that chain and nothing else, so a model holding weights outside it, or whose
forward gives something else than the chain on the fit's first rows (a scaled embedding,
blocks handed a causal mask), is refused before any rank starts (`refuse_off_chain`).
Each rank times every layer on its own device; the ranks gather the [rank x layer] table, so
all agree, and each stage is priced on the rank that will run it (the slowest of its
data/tensor-parallel replicas): a faster device gets more layers.
Stage s lives on pipeline rank s % P (the "loop" placement torch's multi-stage schedules
expect). One global step on P=2 ranks, M=4 micro-batches:

    gpipe   rank0  F0 F1 F2 F3 .. .. .. .. B0 B1 B2 B3        bubble (P-1)/(M+P-1)
            rank1  .. F0 F1 F2 F3 B0 B1 B2 B3 ..
    1f1b    rank0  F0 F1 .. F2 B0 F3 B1 .. B2 B3               same bubble, at most P
            rank1  .. F0 B0 F1 B1 F2 B2 F3 B3 ..               micro-batches in flight
    interleaved / zero_bubble: V=2 stages per rank shrink the bubble by ~V (zero bubble
            also fills it with weight-gradient work).

Data and loss. Every pipeline rank of one data-parallel replica reads the same batch. The
rank's micro-batches from the engine are concatenated, and the schedule re-splits them
into M equal micro-batches (so M must divide the per-replica batch). The schedule's loss
function receives sample indices as its "target" and looks up the targets and sample
weights itself, so any target structure works. Each micro-batch's loss is scaled by
(its samples / replica samples) * (sum of the engine's loss weights), which makes the M
micro-batch gradients add up to the gradient of the replica's weighted mean loss, exactly
as one big batch on one device. The mean loss and the outputs exist on the last stage; they
are broadcast over the pipeline group so every rank returns the same values.

Uneven batches. The stages keep the micro-batch shape of their first step, so every step
runs M micro-batches of `micro_rows` (= replica batch / M) samples. A smaller batch (the
epoch's last, or a replica's short share of it) is padded at the end with copies of a real
sample; the loss reads only the real rows, so padded rows get zero gradient and the step
equals one process's step on the real samples (mean over them). A batch of fewer than M
samples fills the first micro-batches; the all-padding ones add a zero loss. Evaluation
runs in chunks of M * micro_rows samples, padded the same way.

Tied weights (GPT lm_head = token embedding). Layers keep their Parameter objects, so a
weight shared by two layers on one rank stays one tensor. When the sharing layers sit on
different ranks, each rank holds a copy; after backward the copies' gradients are summed
with an all-reduce over just those ranks, so both copies take identical optimizer steps.
A module placed at two positions of an nn.Sequential is the same case (its weights tie the
two positions); one that holds buffers (a BatchNorm used twice) is refused, since each
rank's copy would move its statistics apart.

Randomness (dropout). One process draws every mask from one torch stream, layer after
layer over the whole batch. A pipeline rank runs only its stages, on micro-batches, at the
times the schedule gives, so it cannot draw those same numbers. Instead, fit draws one
number from the torch stream of the process that calls it (so bigtrain.set_seed or
torch.manual_seed before fit fixes it; a second fit draws another), and each rank seeds its
own stream from that number, its pipeline rank and its data-parallel replica
(`pipeline_stage.stage_seed`; a stage's tensor-parallel ranks share one stream). Two runs
from the same seed with the same ranks, micro-batches, schedule and split train
identically (give `split=`: the measured balance, timed anew each run, may cut elsewhere
on a busy machine). What differs from one process: the masks themselves (each unit is still kept
with probability 1 - rate, independently), hence the weights after a step with dropout; and
they change with the number of ranks, the micro-batches, the split or the schedule, which
set the order in which a rank draws.

Slow-rank knob (tests and benchmarks on one machine): `slow_ranks={1: 3.0}`, or the
environment variable BIGTRAIN_SLOW_RANKS="1:3.0", makes rank 1 sleep twice the time of each
of its forward and backward chunks, and of its layer timings, so it runs 3x slower.

Collectives per step: send/recv of activations and gradients between neighbouring stages
(schedule; on gloo with one stage per rank every receive of a step is posted when the step
starts, bigtrain.parallel.early_recv), all-reduce(sum) of tied gradients, all-reduce(avg) of gradients over "dp",
broadcast of loss and outputs from the last stage (a small header, then the outputs).

Example:
    strategy = Pipeline(stages=2, microbatches=4, schedule="1f1b")
    model.fit(x, y, batch_size=32, strategy=strategy, devices=2)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.base import Strategy, StepBatch, register
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.dims import ParallelDims, Topology
from bigtrain.parallel.full_state_load import load_full_into
from bigtrain.parallel.parallelize import parallelize
from bigtrain.parallel.pipeline_checks import check_chain, check_microbatches
from bigtrain.parallel.pipeline_partition import (device_aware_partition, guessed_layer_costs,
                                                  measure_layer_costs, refuse_off_chain,
                                                  sample_input_for, slowest_replica_costs)
from bigtrain.parallel.pipeline_runtime import MULTI_STAGE, PipelineRuntime, PipelineSettings
from bigtrain.parallel.pipeline_stage import StageModule, first_names
from bigtrain.parallel.seeds import draw_seed
from bigtrain.parallel.slow_ranks import check_slow_ranks, slow_ranks_option
from bigtrain.parallel.tensor_plan import check_tp

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero_bubble")


class PipelineModule(nn.Module):
    """What `Pipeline.setup_module` returns: this rank's stages (parameters for the optimizer).

    Calling it runs a forward-only pipeline step (every pipeline rank must call it with the
    same input); the result, from the last stage, is broadcast to all pipeline ranks.
    """

    def __init__(self, stages: Sequence[StageModule], runtime: PipelineRuntime):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self._runtime = [runtime]  # a list keeps the runtime out of the module tree

    def forward(self, x):
        return self._runtime[0].forward_only(x)


class Pipeline(Strategy):
    """Pipeline parallelism over P ranks; further ranks (W / P) become data-parallel.

    Args:
        stages: pipeline degree P (ranks per pipeline); None: the world size.
        microbatches: M, micro-batches per step; must divide each replica's batch.
        schedule: one of "gpipe", "1f1b", "interleaved", "zero_bubble".
        split: layers per stage, overriding the measured balance (len P * V, sums to the
            number of cut-able layers, e.g. [3, 3] for embed + 4 blocks + head on P=2).
        stages_per_rank: V; default 2 for interleaved/zero_bubble, else 1.
        activation_checkpointing: recompute each block's activations in backward.
        sample_input: one micro-batch of model input used to time the layers; when None,
            the fit's own inputs (`use_input_sample`), else one the model declares (GPT
            config, a Keras Input), else one guessed from a first Linear's width; where
            none fits the model, layers are weighed by parameter count.
        tp: tensor-parallel degree inside each stage (used by Hybrid).
        slow_ranks: rank -> slowdown factor >= 1 for testing, e.g. {1: 3.0}; default from the
            BIGTRAIN_SLOW_RANKS environment variable (see the module docstring).

    Example:
        Pipeline(stages=2, microbatches=8, schedule="interleaved")
    """

    name = "pipeline"
    owns_step = True
    supports_loss_scaling = False  # the schedule calls the loss itself
    #: gloo, one stage per rank: post a step's receives at its start (early_recv); False
    #: keeps torch's order (bench_pipeline compares the two)
    early_recv = True

    def __init__(self, stages: int | None = None, microbatches: int = 4,
                 schedule: str = "1f1b", split: Sequence[int] | None = None,
                 stages_per_rank: int | None = None, activation_checkpointing: bool = False,
                 sample_input: torch.Tensor | None = None, tp: int = 1,
                 slow_ranks: dict[int, float] | None = None):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown pipeline schedule {schedule!r}; valid schedules: "
                             f"{', '.join(SCHEDULES)}")
        for label, v in (("stages", stages), ("microbatches", microbatches), ("tp", tp),
                         ("stages_per_rank", stages_per_rank)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"Pipeline {label} must be an integer >= 1, got {v!r}")
        if stages_per_rank not in (None, 1) and schedule not in MULTI_STAGE:
            raise ValueError(f"schedule {schedule!r} runs one stage per rank; use "
                             f"schedule='interleaved' or 'zero_bubble' for stages_per_rank="
                             f"{stages_per_rank}")
        self.stages = stages
        self.microbatches = microbatches
        self.schedule = schedule
        self.split = list(split) if split is not None else None
        self.stages_per_rank = stages_per_rank or (2 if schedule in MULTI_STAGE else 1)
        self.activation_checkpointing = activation_checkpointing
        self.sample_input = sample_input
        self.tp = tp
        self.slow_ranks = slow_ranks_option(slow_ranks)
        #: samples per micro-batch for the run (the schedule's stages keep one shape): the
        #: full replica batch / M, set by `validate`; smaller batches are padded to it
        self.micro_rows: int | None = None
        self._rt = None  # runtime state built in setup/setup_module
        self._data_sample: torch.Tensor | None = None  # rows of the fit's inputs
        #: the run's base seed, drawn where fit was called (see "Randomness"); None: drawn
        #: by every rank in `setup` (ranks a launcher started, each seeded alike)
        self._seed: int | None = None

    # ---- checks before any process group ------------------------------------------------
    def num_processes(self, devices):
        return (self.stages or 2) * self.tp if devices is None else int(devices)

    def dims(self, world_size: int) -> ParallelDims:
        """pp = `stages` (None: every rank not used by tp); the other ranks are replicas."""
        pp = world_size // self.tp if self.stages is None else self.stages
        return ParallelDims.infer(world_size, tp=self.tp, pp=pp)

    def validate(self, world_size: int, global_batch_size: int) -> None:
        dims = self.dims(world_size)
        check_slow_ranks(self.slow_ranks, world_size)
        per_replica = dims.replica_batch(global_batch_size)
        check_microbatches(self.schedule, self.microbatches, dims.pp, per_replica)
        self.micro_rows = per_replica // self.microbatches
        if not dist.is_initialized():  # in the process that calls fit, before it starts ranks
            self._seed = draw_seed()

    def check_model(self, module: nn.Module, world_size: int) -> None:
        dims = self.dims(world_size)
        layers = self.check_module(module, dims.pp)
        check_tp(module, dims.tp)
        self._check_forward(module, layers)  # where fit told the input (use_input_sample)

    def check_module(self, module: nn.Module, pp: int) -> list[tuple[str, nn.Module]]:
        """The layer chain of `module`, or ValueError if it cannot form `pp` * V stages
        (bigtrain.parallel.pipeline_checks)."""
        return check_chain(module, pp, self.stages_per_rank, self.split)

    # ---- setup --------------------------------------------------------------------------
    wants_input_sample = True
    checks_input_sample = True  # `_check_forward`, before any rank starts

    def use_input_sample(self, x) -> None:
        """Told a few rows of the fit's inputs before `setup_module`: the layers are timed
        on them (a first Linear may take (batch, steps, width) input, so its width alone
        does not give the input's shape). A tuple of several inputs is not kept (the
        pipeline feeds one tensor; `step` says so)."""
        if isinstance(x, (tuple, list)):
            x = x[0] if len(x) == 1 else None
        self._data_sample = x[:2].detach() if x is not None and x.shape[0] else None

    def setup(self, env) -> None:
        super().setup(env)
        if not env.distributed:
            raise ValueError("Pipeline needs several processes (one per stage); run with "
                             "devices >= 2 or under the launcher, or use strategy='single'")
        topo = Topology(self.dims(env.world_size), env.rank, env.device.type)
        seed = self._seed if self._seed is not None else draw_seed()
        settings = PipelineSettings(self.schedule, self.microbatches, self.micro_rows,
                                    self.slow_ranks.get(env.rank, 1.0), self.early_recv, seed)
        self._rt = PipelineRuntime(settings, env, topo)

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Cut, shard and wrap `module` (bigtrain.parallel.parallelize: PP -> TP -> AC -> DP)."""
        rt = self._rt
        layers = self.check_module(module, rt.dims.pp)  # same error on every rank
        check_tp(module, rt.dims.tp)
        module.to(self.env.device)
        self._check_forward(module, layers)
        self.model_keys = set(module.state_dict())  # checkpoints name tensors by these
        self.first_names = first_names(module)  # ... and optimizer state by these
        counts = self.split or self._balance(module, layers, rt)
        self.partition = list(counts)  # layers per stage, in stage order
        stages = parallelize(module, rt.topo, pipeline=rt.cutter(layers, counts),
                             activation_checkpointing=self.activation_checkpointing)
        rt.start()
        return PipelineModule(stages, rt)

    def _check_forward(self, module, layers) -> None:
        """Refuse a model whose forward is not its chain of layers run in order, checked on
        the fit's first rows where known (`use_input_sample`; the launching process has
        them too): the stages run the chain and nothing else."""
        sample = next((s for s in (self.sample_input, self._data_sample) if s is not None),
                      None)
        weight = next(module.parameters(), None)  # the model's device, wherever it is
        if sample is not None:
            refuse_off_chain(module, layers, sample.to(
                self.env.device if weight is None else weight.device))

    def _balance(self, module, layers, rt) -> list[int]:
        """Layer counts per stage from every rank's own layer costs (module docstring)."""
        slow = self.slow_ranks.get(self.env.rank, 1.0)
        known = next((s for s in (self.sample_input, self._data_sample,
                                  sample_input_for(module, guess=False)) if s is not None), None)
        if known is not None:
            costs = measure_layer_costs(layers, known.to(self.env.device), slowdown=slow)
        else:  # no input known: a guess, or parameter counts where it does not fit
            guess = sample_input_for(module)
            costs = guessed_layer_costs(layers, None if guess is None
                                        else guess.to(self.env.device), slowdown=slow)
        table = torch.zeros(self.env.world_size, len(costs), dtype=torch.float64,
                            device=self.env.device)
        table[self.env.rank] = torch.tensor(costs, dtype=torch.float64)
        dist.all_reduce(table)  # [rank x layer], zero-padded: the same table on every rank
        owner = [rt.dims.coords(r)["pp"] for r in range(self.env.world_size)]
        #: [pipeline rank x layer] seconds, each row the slowest replica at that coordinate
        self.layer_costs = slowest_replica_costs(table.tolist(), owner)
        n_stages = rt.dims.pp * self.stages_per_rank
        return device_aware_partition(self.layer_costs, [s % rt.dims.pp for s in range(n_stages)])

    def data_shard(self) -> tuple[int, int]:
        if self._rt is None:
            return (0, 1)
        return self._rt.topo.data_shard()

    # ---- one step -----------------------------------------------------------------------
    def train_step(self, module, optimizer, batch: StepBatch, compute_loss, autocast,
                   ctx: StepContext | None = None):
        """Run the schedule on this replica's batch, sync the tied and data-parallel
        gradients, step; returns (outputs per micro, mean loss)."""
        ctx = StepContext() if ctx is None else ctx
        outputs, loss = self._rt.step(batch, compute_loss, autocast, ctx)
        ctx.mark("gradient all-reduce (tied, dp)", phase="comm")
        self._rt.sync_grads()
        ctx.mark("optimizer step")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return outputs, loss

    timing_note = ("forward and backward are this rank's stage compute inside the schedule "
                   "(the last stage's loss counts as forward); other is the rest of the "
                   "schedule's wall time: the bubble and waits on send/recv to neighbouring "
                   "stages; comm_exposed is the loss and output broadcast and the gradient "
                   "all-reduces (a stage that ends its schedule first waits there for the "
                   "others: that cool-down idle is in comm_exposed, not in the bubble)")

    def stats(self) -> dict:
        """Pipeline shape and the measured bubble (see `PipelineRuntime.bubble`), for FitResult
        and the run record."""
        if self._rt is None:
            return {}
        p, m, v = self._rt.dims.pp, self.microbatches, self.stages_per_rank
        return {"pipeline_stages": p, "pipeline_microbatches": m,
                "pipeline_bubble": self._rt.bubble(),
                "pipeline_bubble_theory": (p - 1) / (v * m + p - 1)}

    def forward_only(self, x):
        return self._rt.forward_only(x)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return self._rt.full_state_dict()

    def load_full_state_dict(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Every rank holds the same full `state`; each stage takes its layers' tensors."""
        for stage in self._rt.modules:
            load_full_into(stage, state, stage.original_name)

    def checkpoint_names(self, module: "PipelineModule"):
        """Checkpoints name a stage's tensors as the user's model does: the local
        "stages.<i>.layers.<j>.<rest>" becomes "<name of layer j of stage i>.<rest>", so every
        stage writes its own keys and a checkpoint loads under any other strategy.

        Optimizer state goes under each weight's first name in the user's model, as one
        process names it: a weight tied across stages (a GPT's lm_head on the last stage,
        its token embedding on the first) has one entry that both copies write and read
        (they step alike), so a one-process checkpoint resumes here and back.
        """
        stages, first = module.stages, self.first_names

        def rename(fqn: str) -> str:
            _, i, key = fqn.split(".", 2)  # "stages", i, "layers.<j>.<rest>"
            return stages[int(i)].original_name(key)

        def state_name(fqn: str) -> str:
            name = rename(fqn)
            return first.get(name, name)
        return rename, self.model_keys, state_name

    def teardown(self) -> None:
        self._rt = None

    def refuse_update_rules(self, rules) -> str | None:
        if rules.global_clipnorm:
            return ("global_clipnorm needs the gradient norm over every stage, and each "
                    "pipeline stage steps its own layers; use clipnorm (per variable) or "
                    "clipvalue, or a data-parallel or sharded strategy (ddp, zero3, "
                    "fsdp_offload) for global_clipnorm")
        return None

    def describe(self) -> str:
        return (f"stages={self.stages or 'world'}, microbatches={self.microbatches}, "
                f"schedule={self.schedule!r}" + (f", split={self.split}" if self.split else "")
                + (f", slow ranks {self.slow_ranks}" if self.slow_ranks else ""))

    def __eq__(self, other):
        keys = ("stages", "microbatches", "schedule", "split", "stages_per_rank",
                "activation_checkpointing", "tp", "slow_ranks")
        return type(self) is type(other) and all(getattr(self, k) == getattr(other, k)
                                                 for k in keys)


# stages=None: one stage per process; 4 micro-batches; 1F1B keeps activation memory low
register("pipeline", lambda: Pipeline(stages=None, microbatches=4, schedule="1f1b"))
