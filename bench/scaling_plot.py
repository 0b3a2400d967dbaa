"""The PNG of bench_scaling: step time vs parameters, model-state bytes vs ranks,
parameter-server throughput vs workers; measured points beside the planner's."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _size(ax, size: dict) -> None:
    for fam, marker in (("mlp", "o"), ("gpt", "s")):
        rows = size.get(fam)
        if not rows:
            continue
        n = np.array([r["params"] for r in rows], dtype=float)
        t = np.array([r["step_s"] for r in rows])
        k, c = np.polyfit(np.log(n), np.log(t), 1)
        line = ax.loglog(n, t, marker, label=f"{fam} measured (k = {k:.2f})")[0]
        ax.loglog(n, np.exp(c) * n ** k, "-", color=line.get_color(), alpha=0.4)
        ax.loglog(n, [r["plan_s"] for r in rows], marker, mfc="none", ls="--",
                  color=line.get_color(), label=f"{fam} planner")
    ax.set_xlabel("parameters")
    ax.set_ylabel("step time (s), 1 thread")
    ax.set_title("step time vs parameters")
    ax.legend(fontsize=7)


def _zero(ax, zero: list) -> None:
    for name, marker in (("zero1", "o"), ("zero2", "s"), ("zero3", "^")):
        rows = [r for r in zero if r["strategy"] == name]
        ranks = [r["ranks"] for r in rows]
        line = ax.plot(ranks, [r["measured"] / 1e6 for r in rows], marker,
                       label=f"{name} measured")[0]
        ax.plot(ranks, [r["formula"] / 1e6 for r in rows], "--", color=line.get_color(),
                label=f"{name} ZeRO formula")
    ax.set_xlabel("ranks")
    ax.set_ylabel("model states, heaviest rank (MB)")
    ax.set_title("per-rank model-state bytes")
    ax.legend(fontsize=7)


def _ps(ax, ps: list) -> None:
    for servers, marker in ((1, "o"), (2, "s")):
        rows = [r for r in ps if r["servers"] == servers]
        w = [r["workers"] for r in rows]
        line = ax.plot(w, [r["rate"] for r in rows], marker + "-",
                       label=f"{servers} server(s) measured")[0]
        ax.plot(w, [r["plan"] for r in rows], marker, mfc="none", ls="--",
                color=line.get_color(), label=f"{servers} server(s) planner")
    ax.set_xlabel("workers (BSP, real compute)")
    ax.set_ylabel("samples/s, all workers")
    ax.set_title("parameter server throughput")
    ax.legend(fontsize=7)


def plot(results: dict, path: str) -> None:
    """Write one panel per part present in `results` ("size", "zero", "ps") to `path`."""
    parts = [p for p in ("size", "zero", "ps") if results.get(p)]
    if not parts:
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4.2), squeeze=False)
    draw = {"size": _size, "zero": _zero, "ps": _ps}
    for ax, part in zip(axes[0], parts):
        draw[part](ax, results[part])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
