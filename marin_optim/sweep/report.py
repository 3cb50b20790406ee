"""What a sweep writes: ``sweep.md``, ``sweep.json``, each tuned config as a speedrun YAML, the
sensitivity plots and the tuned runs' loss curves; and the speedup over tuned AdamW.

Speedup, as Marin's optimizer study measures it: the number of steps tuned AdamW needs to reach
an optimizer's final eval loss, divided by that optimizer's steps. AdamW's final eval loss is
measured at every run length of ``lengths`` (1x, 2x, 4x the speedrun's steps, its tuned config,
each seed) and *interpolated* linearly in ``log(steps)`` between them (a running minimum first, so
that noise cannot make more steps look worse); nothing is extrapolated: an optimizer whose loss
AdamW beats at 1x has a speedup below 1 (``< 1``), one that beats AdamW at the longest length a
speedup beyond it (``> 4``). With several seeds, seed ``i`` of an optimizer is compared with seed
``i`` of AdamW, and the speedup is the mean and standard deviation over the seeds.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marin_optim.speedrun import results as res
from marin_optim.speedrun.config import SpeedrunConfig
from marin_optim.speedrun.plots import Curve, plot_curves, save_png
from marin_optim.sweep.grids import GROWING
from marin_optim.sweep.search import Outcome, SweepSpec, base_identity, sweep_definition
from marin_optim.sweep.trials import TrialStore, stable_hash

METHOD = "{baseline}'s final eval loss at {lengths} times the steps, interpolated linearly in log(steps)"


def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> tuple[float, str]:
    """The steps at which a loss measured at ``steps`` (increasing) reaches ``target``, by linear
    interpolation in ``log(steps)`` of the running minimum of ``losses`` (between the first
    measurement that reaches it and the one before). Returns ``(steps, "")``, or
    ``(steps[0], "<")`` when ``target`` is above the loss at ``steps[0]`` (reached sooner than
    measured) and ``(steps[-1], ">")`` when it is below the loss at ``steps[-1]``.

    >>> steps_to_reach([100, 200, 400], [3.0, 2.8, 2.7], 2.9)
    (141.42..., '')
    """
    measured = np.asarray(losses, dtype=float)
    best = np.minimum.accumulate(measured)
    if not np.all(np.isfinite(measured)):
        return math.nan, "failed"
    if target > best[0]:
        return float(steps[0]), "<"
    if target < best[-1]:
        return float(steps[-1]), ">"
    i = int(np.argmax(best <= target))  # the first measurement that reaches it
    if i == 0:
        return float(steps[0]), ""
    lo, hi = math.log(steps[i - 1]), math.log(steps[i])
    frac = (best[i - 1] - target) / (best[i - 1] - best[i])
    return float(math.exp(lo + frac * (hi - lo))), ""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(spec: SweepSpec, store: TrialStore, outcomes: Mapping[str, Outcome]) -> dict[str, Any]:
    """Per optimizer: best config, eval loss over the seeds, speedup over the baseline."""
    rows = store.rows
    baseline = outcomes.get(spec.baseline) if spec.baseline else None
    out: dict[str, Any] = {}
    for label, o in outcomes.items():
        losses = [float(rows[t.key]["eval_loss"]) for t in o.seed_trials]
        failed = [t for t in o.seed_trials if rows[t.key]["status"] != "ok"]
        trials = [r for r in rows.values() if r["label"] == label]
        entry: dict[str, Any] = {
            "best": o.best.to_dict(),
            "changes": o.changes,
            "path": o.path,
            "eval_loss": dict(zip(("mean", "std"), mean_std(losses), strict=True), values=losses),
            "seeds_failed": len(failed),
            "trials": len(trials),
            "trials_failed": sum(r["status"] != "ok" for r in trials),
            "yaml": f"best/{label}.yaml",
        }
        if baseline is not None and not failed:
            values, bounds = [], []
            lengths = sorted(baseline.length_trials)
            for i in range(len(o.seed_trials)):
                base_losses = [float(rows[baseline.length_trials[n][i].key]["eval_loss"]) for n in lengths]
                steps, bound = steps_to_reach(lengths, base_losses, losses[i])
                values.append(steps)
                bounds.append(bound)
            # a bound is not a measurement: no mean over seeds where any is one
            mean, std = mean_std(values) if not any(bounds) else (math.nan, math.nan)
            entry["speedup"] = {
                "mean": mean,
                "std": std,
                "values": values,
                "bounds": bounds,
                "seeds": [t.seed for t in o.seed_trials],
                "bound": bounds[0] if len(set(bounds)) == 1 else "mixed",
                "method": method(spec),
            }
        out[label] = entry
    return out


def method(spec: SweepSpec) -> str:
    """How the speedup is measured, in words (:data:`METHOD`)."""
    return METHOD.format(baseline=spec.baseline, lengths=", ".join(map(str, spec.lengths)))


def _speedup_text(entry: Mapping[str, Any], lengths: Sequence[int]) -> str:
    """``mean ± std`` over the seeds; ``< 1`` or ``> 4`` (the lengths' ends) where every seed is
    beyond one; each seed's value where only some are (``1.07, < 1 (seeds 0, 1)``)."""
    s = entry.get("speedup")
    if s is None:
        return "-"

    def one(value: float, bound: str) -> str:
        return {"<": f"< {lengths[0]}", ">": f"> {lengths[-1]}", "": f"{value:.2f}"}.get(bound, bound)

    if not any(s["bounds"]):
        return f"{s['mean']:.2f} ± {s['std']:.2f}"
    if s["bound"] != "mixed":
        return one(s["values"][0], s["bound"])
    each = ", ".join(one(v, b) for v, b in zip(s["values"], s["bounds"], strict=True))
    return f"{each} (seeds {', '.join(map(str, s['seeds']))})"


def machine() -> str:
    """This machine, as a report names it: cores, architecture, JAX's backend."""
    import jax

    return f"{os.cpu_count()}-core {platform.machine()}, JAX {jax.__version__} on {jax.default_backend()}"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def ranked(summary: Mapping[str, Any]) -> list[str]:
    """The optimizers of ``summary``, lowest mean final eval loss first (diverged ones last): the
    order of ``sweep.md``'s table and of the loss curves' legend."""
    return sorted(
        summary, key=lambda k: (math.isnan(summary[k]["eval_loss"]["mean"]), summary[k]["eval_loss"]["mean"])
    )


def format_markdown(
    base: SpeedrunConfig, spec: SweepSpec, store: TrialStore, summary: Mapping[str, Any]
) -> str:
    t = base.train
    lines = [
        "# Sweep",
        "",
        f"{len(store.rows)} trials, {datetime.date.today().isoformat()}, {machine()}: speedrun model "
        f"{base.model.describe()}, data `{base.data.source or ('files' if base.data.files else 'stdlib')}`, "
        f"{t.num_train_steps} steps of {t.batch_size} x {t.seq_len} bytes, seeds "
        f"{t.seed}..{t.seed + spec.seeds - 1}; coordinate descent (threshold {spec.threshold} nats, at most "
        f"{spec.max_rounds} rounds).",
        "",
        "| optimizer | tuned settings (changed from the defaults) | final eval loss (mean ± std) | "
        f"speedup over tuned {spec.baseline or '-'} | trials (failed) |",
        "|---|---|---:|---:|---:|",
    ]
    order = ranked(summary)
    for label in order:
        e = summary[label]
        settings = ", ".join(f"{k}={_value(v)}" for k, v in e["changes"].items()) or "defaults"
        loss = e["eval_loss"]
        n = len(loss["values"])
        loss_text = (
            f"{loss['mean']:.4f} ± {loss['std']:.4f} ({n} seeds)" if not e["seeds_failed"] else "diverged"
        )
        lines.append(
            f"| {label} | {settings} | {loss_text} | {_speedup_text(e, spec.lengths)} | "
            f"{e['trials']} ({e['trials_failed']}) |"
        )
    if spec.baseline:
        lines += [
            "",
            f"Speedup: {method(spec)}; seed i against seed i.",
        ]
    lines += ["", "Each tuned config reruns with `marin-optim speedrun --config_path best/<optimizer>.yaml`."]
    for label in order:
        lines += [
            "",
            f"## {label}",
            "",
            "| changes from the defaults | seed | steps | final eval loss | status |",
            "|---|---:|---:|---:|---|",
        ]
        trials = sorted(
            (r for r in store.rows.values() if r["label"] == label),
            key=lambda r: (r["steps"], r["seed"], r["eval_loss"]),
        )
        for r in trials:
            changes = ", ".join(f"{k}={_value(v)}" for k, v in r.get("changes", {}).items()) or "defaults"
            status = "ok" if r["status"] == "ok" else f"failed: {r.get('reason', '')}"
            loss = f"{r['eval_loss']:.4f}" if math.isfinite(r["eval_loss"]) else "-"
            lines.append(f"| {changes} | {r['seed']} | {r['steps']} | {loss} | {status} |")
    return "\n".join(lines) + "\n"


def sensitivity(
    spec: SweepSpec, store: TrialStore, outcome: Outcome, seed: int, steps: int
) -> dict[str, list[tuple[Any, float]]]:
    """Per swept field: ``(value, final eval loss)`` of every trial that is the tuned config with
    only that field changed (seed and steps of the search), the tuned value included."""
    best = outcome.best.to_dict()
    out: dict[str, list[tuple[Any, float]]] = {}
    for name in spec.grids[outcome.label]:
        points = []
        for r in store.rows.values():
            if r["label"] != outcome.label or r["seed"] != seed or r["steps"] != steps:
                continue
            if all(r["optimizer"].get(k) == v for k, v in best.items() if k != name):
                points.append((r["optimizer"][name], float(r["eval_loss"])))
        out[name] = sorted(points)
    return out


def log_axis_at(ax: Any, xs: Sequence[float]) -> None:
    """A log x axis ticked and labelled at the values tried, ``xs``, and nowhere else: left to
    itself, a log axis spanning under a decade labels its minor ticks, and those overlap."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)


def plot_sensitivity(path: Path, label: str, curves: Mapping[str, list[tuple[Any, float]]]) -> None:
    """Writes :func:`sensitivity_figure` as a PNG (nothing when no field has a point)."""
    fig = sensitivity_figure(label, curves)
    if fig is not None:
        save_png(fig, path, dpi=100)


def sensitivity_figure(label: str, curves: Mapping[str, list[tuple[Any, float]]]) -> Any:
    """One panel per swept field: final eval loss against the field's value (failed: at the top);
    wide enough for its title with a single panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, pts in curves.items() if pts]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(max(3.2 * len(names), 6.0), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        xs = [float(x) for x, _ in curves[name]]
        ys = [y for _, y in curves[name]]
        finite = [y for y in ys if math.isfinite(y)]
        top = max(finite) + 0.05 * (max(finite) - min(finite) + 1e-3) if finite else 1.0
        ax.plot(xs, [y if math.isfinite(y) else top for y in ys], marker="o")
        for x, y in zip(xs, ys, strict=True):
            if not math.isfinite(y):
                ax.plot([x], [top], marker="x", color="red")
        if name in GROWING and all(x > 0 for x in xs):
            log_axis_at(ax, xs)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final eval loss")
    fig.suptitle(f"{label}: one field changed from the tuned config (x: diverged)", fontsize=9)
    fig.tight_layout()
    return fig


def tuned_curves(
    store: TrialStore, outcomes: Mapping[str, Outcome], log: Callable[[str], None] = print
) -> dict[str, Curve]:
    """Each tuned config's loss curves, read from the run directory of its first seed's trial that
    still holds its metrics (a sweep continued on another machine lacks the directories of the
    trials it reuses), labelled with that seed where it is not the search's own; an optimizer with
    none is left out, and said."""
    curves = {}
    for label, o in outcomes.items():
        for i, trial in enumerate(o.seed_trials):
            run = Path(store.rows[trial.key]["run_dir"])
            metrics = next((m for m in (run / res.METRICS, run / res.PARTIAL_METRICS) if m.exists()), None)
            if metrics is not None:
                curves[label if i == 0 else f"{label} (seed {trial.seed})"] = Curve.from_rows(
                    res.read_metrics(metrics)
                )
                break
        else:
            log(f"sweep: no loss curves for {label}: none of its tuned runs' directories holds its metrics")
    return curves


def write_report(
    root: Path,
    base: SpeedrunConfig,
    spec: SweepSpec,
    store: TrialStore,
    outcomes: Mapping[str, Outcome],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes every output file (each atomically) from the trials on ``base``; returns the summary."""
    store = store.on_base(stable_hash(base_identity(base)))
    summary = summarize(spec, store, outcomes)
    seed, steps = base.train.seed, base.train.num_train_steps
    for label, o in outcomes.items():
        tuned = base.replace(optimizer=o.best, output_dir=None, resume=False)
        res.write_atomic(root / "best" / f"{label}.yaml", tuned.to_yaml())
        plot_sensitivity(root / f"sensitivity-{label}.png", label, sensitivity(spec, store, o, seed, steps))
    curves = tuned_curves(store, {label: outcomes[label] for label in ranked(summary)}, log)
    if curves:
        plot_curves(
            root / "curves.png",
            curves,
            title=f"tuned runs on {base.model.name} ({steps} steps, seed {seed})",
        )
    data = {
        "definition": sweep_definition(base, spec),
        "results": summary,
        "trials": sorted(store.rows.values(), key=lambda r: (r["label"], r["steps"], r["seed"], r["key"])),
    }
    res.write_atomic(root / "sweep.json", res.dumps(data) + "\n")
    res.write_atomic(root / "sweep.md", format_markdown(base, spec, store, summary))
    return summary
