"""`PSConfig`: the settings of a parameter-server run, checked before any process starts.

Example:
    PSConfig(servers=2, mode="ssp", staleness=1)
    PSConfig(balance="fixed", weights=(3.0, 1.0))   # worker 0 takes 3/4 of every batch
"""
from __future__ import annotations

from dataclasses import dataclass

MODES = ("bsp", "asp", "ssp")
BALANCE_MODES = ("even", "fixed", "speed")
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class PSConfig:
    """Settings of a parameter-server run.

    Attributes:
        servers: how many of the ranks are parameter servers (the last ones).
        mode: "bsp", "asp" or "ssp" (see bigtrain.parallel.parameter_server.strategy).
        staleness: SSP bound, in steps (clocks); must be >= 0; unused by BSP and ASP.
        checkpoint_dir: folder for the servers' checkpoints (None: no checkpoints). When it
            already holds them, the servers resume from them.
        checkpoint_every: also save after every this many updates (0: only at the end).
        straggler_delay_s: (worker index, seconds) pairs; those workers sleep that long each
            step. A knob to simulate slow workers in tests and benchmarks.
        comm_timeout_s: limit for one point-to-point wait (None: the process group's).
        balance: the workers' shares of each global batch: "even", "fixed" (`weights`) or
            "speed" (measured and re-split, BSP only; starts from `weights` or even).
        weights: declared relative shares, one per worker (e.g. (3, 1)); () for none.
        slow_ranks: (worker rank, factor >= 1) pairs; those workers run factor x slower (a
            knob for tests and benchmarks; see bigtrain.parallel.slow_ranks).
        rebalance_every: measured steps between re-splits (balance="speed").
        ema: weight of the previous speed estimate in the moving average, in [0, 1).
        clock: what a worker's compute is timed with: "wall" seconds (the speed that
            matters) or "cpu" seconds of this process (hosts shared with unrelated load;
            the slow knob's delay counts as factor x CPU seconds).
        cpu_workers: how many workers (the last ones) compute on the host CPU even where
            the others have accelerators: CPU workers beside GPU workers in one job, each
            taking the share of the batch its speed earns (with balance="speed").
    """
    servers: int = 1
    mode: str = "bsp"
    staleness: int = 2
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    straggler_delay_s: tuple[tuple[int, float], ...] = ()
    comm_timeout_s: float | None = None
    balance: str = "even"
    weights: tuple[float, ...] = ()
    slow_ranks: tuple[tuple[int, float], ...] = ()
    rebalance_every: int = 5
    ema: float = 0.5
    clock: str = "wall"
    cpu_workers: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown parameter-server mode {self.mode!r}; valid modes: "
                             f"{', '.join(MODES)}")
        if not isinstance(self.servers, int) or self.servers < 1:
            raise ValueError(f"servers must be an integer >= 1, got {self.servers!r}")
        if not isinstance(self.staleness, int) or self.staleness < 0:
            raise ValueError(f"staleness must be an integer >= 0 (steps a worker may run ahead "
                             f"of the slowest), got {self.staleness!r}")
        if not isinstance(self.cpu_workers, int) or self.cpu_workers < 0:
            raise ValueError(f"cpu_workers must be an integer >= 0, got {self.cpu_workers!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        t = self.comm_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0):
            raise ValueError(f"comm_timeout_s must be a number of seconds > 0 or None (the "
                             f"process group's timeout), got {t!r}")
        if any(not isinstance(d, (int, float)) or d < 0 for _, d in self.straggler_delay_s):
            raise ValueError(f"straggler_delay_s must map worker ranks to seconds >= 0, got "
                             f"{dict(self.straggler_delay_s)}")
        self._check_balance()

    def check_servers(self, world_size: int) -> None:
        """Refuse a job of `world_size` processes too small for `servers` and `cpu_workers`
        (every rank checks it again in setup, for jobs that reach it without fit's checks)."""
        s, c = self.servers, self.cpu_workers
        if c > max(world_size - s, 0):
            raise ValueError(f"cpu_workers={c} but the job has only {max(world_size - s, 0)} "
                             f"workers ({world_size} processes, {s} servers); use "
                             f"cpu_workers <= {max(world_size - s, 0)}")
        if s >= world_size:
            raise ValueError(f"ParameterServer(servers={s}) needs more than {s} processes (the "
                             f"last {s} serve, the rest train) but the job has {world_size}; "
                             f"use devices >= {s + 1} or fewer servers")

    def check_job(self, world_size: int, global_batch_size: int) -> None:
        """Refuse a job whose processes, global batch or declared `weights` do not fit these
        settings: every worker needs a sample of each batch, and a share of its own."""
        self.check_servers(world_size)
        workers = world_size - self.servers
        if global_batch_size < workers:
            raise ValueError(f"batch size {global_batch_size} is smaller than the number of "
                             f"workers ({workers}); raise batch_size or use fewer devices")
        w = self.weights
        if w and len(w) != workers:
            raise ValueError(f"weights={list(w)} declares {len(w)} shares for {workers} "
                             f"workers; give one share per worker")

    def check_workers(self, workers: int) -> None:
        """Refuse straggler ranks that are not workers (0..workers-1) of this job."""
        bad = sorted(r for r, _ in self.straggler_delay_s
                     if not isinstance(r, int) or not 0 <= r < workers)
        if bad:
            raise ValueError(f"straggler_delay_s names ranks {bad}, but the workers of this job "
                             f"are ranks 0..{workers - 1} (the last {self.servers} serve); "
                             "give worker ranks only")

    def _check_balance(self) -> None:
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.balance == "fixed" and not self.weights:
            raise ValueError("balance='fixed' needs weights=[...], one share per worker")
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"weights must be positive shares, one per worker, got "
                             f"{list(self.weights)}")
        if self.balance == "speed" and self.mode != "bsp":
            raise ValueError(f"balance='speed' needs mode='bsp': in {self.mode!r} workers do "
                             "not wait for each other, so a slow one only makes fewer updates; "
                             "use balance='fixed' with weights=[...] to split batches unevenly")
        if self.rebalance_every < 1 or not 0 <= self.ema < 1:
            raise ValueError(f"need rebalance_every >= 1 and 0 <= ema < 1, got "
                             f"{self.rebalance_every} and {self.ema}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
