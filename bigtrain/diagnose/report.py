"""One report for every run, whatever the strategy: `report.md` + PNG plots in the run dir.

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch), so reports render on headless machines and inside notebooks alike.

Example:
    from bigtrain.diagnose.report import render_report
    path = render_report("runs/mnist")   # runs/mnist/report.md, loss.png, ...
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bigtrain.diagnose.findings import render_doctor
from bigtrain.diagnose.record import RunRecord
from bigtrain.diagnose.training_checks import check_run

PHASES = ("data", "forward", "backward", "optimizer", "comm_exposed", "other")
MEMORY_PARTS = ("params", "grads", "optimizer", "activations_peak")
_NOTES = ("step_time_note", "memory_note", "peak_flops_note")  # printed beside their tables

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> "Figure":
    """A matplotlib Figure (imported here, not with the module: a fit that draws no report
    does not pay for importing matplotlib)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _plot_curves(history: dict, keys: list[str], title: str, path: Path) -> Path:
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for k in keys:
        ax.plot(range(1, len(history[k]) + 1), history[k], marker="o", label=k)
    ax.set(xlabel="epoch", title=title)
    ax.legend()
    return _save(fig, path)


def _plot_step_time(rec: RunRecord, path: Path) -> Path:
    fig = _figure(9, 4)
    ax = fig.add_subplot(1, 2, 1)
    bottom = 0.0
    for phase in PHASES:
        ms = getattr(rec.step_time, phase) * 1e3
        ax.bar(["step"], [ms], bottom=bottom, label=phase)
        bottom += ms
    rate = f", {rec.samples_per_s:.1f} samples/s" if rec.samples_per_s else ""
    ax.set(ylabel="ms per step", title=f"step time{rate}")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    times = rec.rank_step_times
    ax2.bar([str(r) for r in range(len(times))], [t * 1e3 for t in times])
    ax2.set(xlabel="rank", ylabel="ms per step", title="per-rank step time")
    return _save(fig, path)


def _plot_memory(rec: RunRecord, path: Path) -> Path:
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ranks = sorted(rec.memory)
    labels = [str(r) for r in ranks]
    bottom = [0.0] * len(ranks)
    for part in MEMORY_PARTS:
        mb = [(getattr(rec.memory[r], part) or 0) / 1e6 for r in ranks]
        ax.bar(labels, mb, bottom=bottom, label=part)
        bottom = [b + m for b, m in zip(bottom, mb)]
    rss = [(rec.memory[r].rss or 0) / 1e6 for r in ranks]
    if any(rss):
        ax.plot(labels, rss, "k_", markersize=30, label="rss")
    ax.set(xlabel="rank", ylabel="MB", title="memory per rank")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fmt(value, spec: str = ".4g", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _summary(rec: RunRecord) -> list[str]:
    fused = {True: "fused", False: "unfused", None: "fused: unknown"}[rec.optimizer_fused]
    mfu = "n/a" if rec.mfu is None else f"{rec.mfu:.1%}" + (
        f" of {rec.peak_flops:.3g} FLOP/s" if rec.peak_flops else "")
    rows = [("strategy", rec.strategy), ("world size", rec.world_size),
            ("threads per rank", rec.threads_per_rank), ("optimizer", f"{rec.optimizer} ({fused})"),
            ("precision", rec.precision), ("global batch", rec.batch_size),
            ("micro-batches", rec.microbatches), ("epochs", rec.epochs),
            ("samples/s", _fmt(rec.samples_per_s)), ("tokens/s", _fmt(rec.tokens_per_s)),
            ("MFU", mfu), ("pipeline bubble", _bubble(rec))]
    return ["| run | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _bubble(rec: RunRecord) -> str:
    theory = rec.extra.get("pipeline_bubble_theory")
    text = _fmt(rec.pipeline_bubble, ".1%")
    return text + (f" (schedule theory {theory:.1%})" if theory is not None else "")


def _step_table(rec: RunRecord) -> list[str]:
    st = rec.step_time
    lines = ["| phase | ms per step | share |", "|---|---|---|"]
    lines += [f"| {p} | {getattr(st, p) * 1e3:.2f} | {st.share(p):.0%} |" for p in PHASES]
    return lines + [f"| total | {st.total * 1e3:.2f} | |"]


def _memory_table(rec: RunRecord) -> list[str]:
    cols = MEMORY_PARTS + ("rss",)
    lines = ["| rank | " + " | ".join(f"{c} (MB)" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in sorted(rec.memory):
        m = rec.memory[r]
        cells = [_fmt(None if getattr(m, c) is None else getattr(m, c) / 1e6, ".2f")
                 for c in cols]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def _plots(rec: RunRecord, run_dir: Path) -> list[Path]:
    h = {k: v for k, v in rec.history.items() if v}
    losses = [k for k in h if "loss" in k]
    metrics = [k for k in h if "loss" not in k]
    out = []
    if losses:
        out.append(_plot_curves(h, losses, "loss per epoch", run_dir / "loss.png"))
    if metrics:
        out.append(_plot_curves(h, metrics, "metrics per epoch", run_dir / "metrics.png"))
    if rec.step_time.total > 0 or rec.rank_step_times:
        out.append(_plot_step_time(rec, run_dir / "throughput.png"))
    if rec.memory:
        out.append(_plot_memory(rec, run_dir / "memory.png"))
    return out


def render_report(run_dir) -> Path:
    """Write `report.md` and its PNG plots into `run_dir` from its `run.json`.

    Args:
        run_dir: a run directory holding run.json (RunRecord.save).

    Returns:
        The path of report.md.

    Example:
        >>> path = render_report("runs/mnist")   # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    rec = RunRecord.load(run_dir)
    plots = _plots(rec, run_dir)
    final = {k: v[-1] for k, v in rec.history.items() if v}
    lines = [f"# Run report: {rec.strategy} on {rec.world_size} rank(s)", ""] + _summary(rec)
    if final:
        lines += ["", "## Final metrics", ""]
        lines += [f"- {k}: {v:.4g}" for k, v in final.items()]
    lines += ["", "## Step time", ""] + _step_table(rec)
    if rec.extra.get("step_time_note"):
        lines += ["", f"How measured: {rec.extra['step_time_note']}."]
    if rec.extra.get("peak_flops_note"):
        lines += ["", f"Peak FLOP/s (for MFU): {rec.extra['peak_flops_note']}."]
    if rec.memory:
        lines += ["", "## Memory per rank", ""] + _memory_table(rec)
        if rec.extra.get("memory_note"):
            lines += ["", f"How measured: {rec.extra['memory_note']}."]
    lines += ["", "## Doctor", "", "```", render_doctor(check_run(rec)), "```"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    extra = {k: v for k, v in rec.extra.items() if k not in _NOTES}
    if extra:
        lines += ["", "## Extra", ""] + [f"- {k}: {v}" for k, v in extra.items()]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
