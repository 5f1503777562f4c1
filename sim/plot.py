"""PNG plots of simulator runs (matplotlib, optional): wait CDF per policy, waiting customers over time,
session-seconds per agent. Without matplotlib, :func:`require_matplotlib` raises a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfrouter.sim.runner import RunResult

INSTALL_HINT = "plots need matplotlib: pip install 'kfrouter[plot]'"
_MAX_POINTS = 20_000  # points per line; longer series are thinned (every k-th point, last kept)


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported."""


def require_matplotlib() -> Any:
    """Import matplotlib with a non-interactive backend, or raise PlotUnavailable with the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return plt


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= _MAX_POINTS:
        return points
    k = -(-len(points) // _MAX_POINTS)
    out = points[::k]
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def write_plots(results: list[RunResult], out_dir: str | Path) -> list[Path]:
    """Write wait_cdf.png, queue.png and agent_load.png into ``out_dir`` (created); returns the paths."""
    plt = require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for res in results:
        waits = sorted(res.tally.waits)
        if not waits:
            continue
        n = len(waits)
        pts = _thin([(w, (i + 1) / n) for i, w in enumerate(waits)])
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=res.policy)
    ax.set_xlabel("wait until a session (s)")
    ax.set_ylabel("share of served customers")
    ax.set_title("Wait CDF")
    ax.grid(True, alpha=0.3)
    ax.legend()
    paths.append(out / "wait_cdf.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    for res in results:
        pts = _thin([(t, float(q)) for t, q in res.timeline])
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=res.policy, linewidth=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("customers waiting")
    ax.set_title("Queue length over time")
    ax.grid(True, alpha=0.3)
    ax.legend()
    paths.append(out / "queue.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    agents = sorted({a for res in results for a in res.agents})
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(agents) * len(results)), 4))
    width = 0.8 / max(1, len(results))
    for k, res in enumerate(results):
        xs = [i + k * width for i in range(len(agents))]
        ys = [res.agents[a].busy_s / 3600.0 if a in res.agents else 0.0 for a in agents]
        ax.bar(xs, ys, width=width, label=res.policy)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(agents))])
    ax.set_xticklabels(agents, rotation=90, fontsize=6)
    ax.set_ylabel("session-hours")
    ax.set_title("Load per agent")
    ax.legend()
    paths.append(out / "agent_load.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
