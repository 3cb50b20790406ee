"""Loss-curve PNGs (matplotlib, headless), written atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marin_optim.speedrun.results import write_atomic


@dataclass
class Curve:
    """One run's losses: per-step training loss and the evaluations."""

    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)

    @staticmethod
    def from_rows(rows: Sequence[Mapping]) -> Curve:
        c = Curve()
        for r in rows:
            if "loss" in r:
                c.train_steps.append(int(r["step"]))
                c.train_loss.append(float(r["loss"]))
            if "eval_loss" in r:
                c.eval_steps.append(int(r["step"]))
                c.eval_loss.append(float(r["eval_loss"]))
        return c


def smooth(values: Sequence[float], alpha: float = 0.1) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing). A non-finite value
    (the loss of a step the guard skipped) leaves the average as it was, rather than end it."""
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = (1 - alpha) * avg + alpha * v
            weight = (1 - alpha) * weight + alpha
        out.append(avg / weight if weight else math.nan)
    return np.asarray(out)


def save_png(fig: Any, path: str | Path, **savefig: Any) -> None:
    """Writes matplotlib figure ``fig`` to ``path`` as a PNG, atomically, and closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def curve_styles(n: int) -> list[tuple[tuple[float, ...], str]]:
    """``n`` (colour, line style) pairs, no two alike up to 80: matplotlib's ten-colour cycle up to
    ten curves, its twenty-colour palette beyond (a sweep of the study's eleven optimizers plots
    eleven), then the same colours dashed, dotted, dash-dotted."""
    from matplotlib import colormaps

    colors = colormaps["tab10" if n <= 10 else "tab20"].colors
    styles = ("-", "--", ":", "-.")
    return [(colors[i % len(colors)], styles[(i // len(colors)) % len(styles)]) for i in range(n)]


def plot_curves(
    path: str | Path,
    curves: Mapping[str, Curve],
    title: str,
    loss_floor: float | None = None,
) -> Path:
    """Training loss (smoothed, raw faint) and evaluation loss (markers) for each run, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    lows = []
    for (label, c), (color, dashes) in zip(curves.items(), curve_styles(len(curves)), strict=True):
        if c.train_steps:
            ax.plot(c.train_steps, c.train_loss, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(
                c.train_steps,
                smooth(c.train_loss),
                color=color,
                linestyle=dashes,
                linewidth=1.5,
                label=f"{label} train",
            )
            lows.append(min(c.train_loss))
        # evaluations are joined only where they trace a curve: two (start, end) would draw a chord
        if c.eval_steps:
            joined = "--" if len(c.eval_steps) > 2 else "none"
            ax.plot(
                c.eval_steps, c.eval_loss, color=color, marker="o", linestyle=joined, label=f"{label} eval"
            )
            lows.append(min(c.eval_loss))
    if loss_floor is not None:
        ax.axhline(loss_floor, color="black", linestyle=":", label=f"entropy floor {loss_floor:.3f}")
        lows.append(loss_floor)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_title(title)
    if lows:
        # The first steps sit near ln(256) = 5.5; keep the interesting range readable.
        ax.set_ylim(bottom=min(lows) * 0.95)
    ax.grid(alpha=0.3)
    # beside the axes, where it hides none of the curves' ends
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    save_png(fig, path, dpi=110, bbox_inches="tight")
    return Path(path)
