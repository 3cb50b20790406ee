"""Coordinate descent over each optimizer's hyperparameters, its finalists' seeds, and the sweep
directory that keeps it all.

The search, per optimizer (Marin's optimizer study, Wen et al., 2025, section 3): start from the
optimizer's defaults (or a given config: ``--start``); for each swept field in turn
(:mod:`marin_optim.sweep.grids`, the learning rate first), run every other value of its grid with
the rest held, and move to the best one if it lowers the final eval loss by more than
``threshold``; repeat the round until no single change does (or ``max_rounds``). The best
config is then run with ``seeds`` seeds (the search's own seed first), and the baseline's
(AdamW's) also at every run length in ``lengths`` (multiples of the speedrun's steps), which the
speedup needs (:mod:`marin_optim.sweep.report`).

Every optimizer's search is a generator that yields the trials it needs next and receives their
rows; the sweep runs the trials of all optimizers' next steps together, so ``--workers`` and Ray
have a batch to share. A trial asked for again (the next round, a resumed sweep) is read from
``trials.jsonl`` instead of being run (:class:`~marin_optim.sweep.trials.TrialStore`); before
they run, the log says which of an optimizer's next trials have to run and what for (``sweep:
lion, round 2, beta1: 0.8, 0.95 (2 trials)``), so a resumed sweep shows where each search stands.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marin_optim.config import OptimizerConfig
from marin_optim.config.base import apply_dotted
from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.speedrun import results as res
from marin_optim.speedrun.config import SpeedrunConfig
from marin_optim.sweep.grids import MAX_EXTENSIONS, beyond, check_value, near
from marin_optim.sweep.trials import Runner, Trial, TrialStore, held, run_all, stable_hash

DEFINITION = "definition.json"
LOCK = ".lock"
"""Held by the sweep running in a directory (a second one there is refused)."""
DEFAULT_OUTPUT_DIR = "runs/sweep"


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep searches: its optimizers (label -> starting config), their grids, and how."""

    optimizers: dict[str, OptimizerConfig]
    grids: dict[str, dict[str, tuple[Any, ...]]]
    given: frozenset[tuple[str, str]] = frozenset()
    """``(label, field)`` grids given with ``--grid``: used as written, never grown."""
    seeds: int = 3
    threshold: float = 0.005
    max_rounds: int = 3
    lengths: tuple[int, ...] = (1, 2, 4)
    baseline: str | None = "adamw"
    origins: dict[str, str] = field(default_factory=dict)
    """label -> where its starting config came from, with ``--start`` (its file, or its defaults
    when it has none there); said in the run's header, not part of the sweep's definition (the
    starting configs are)."""

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"--seeds={self.seeds}: must be at least 1")
        if not self.threshold >= 0:
            raise ConfigError(f"--threshold={self.threshold}: must be >= 0 (a loss difference in nats)")
        if self.max_rounds < 1:
            raise ConfigError(f"--max_rounds={self.max_rounds}: must be at least 1")
        if sorted(set(self.lengths)) != list(self.lengths) or self.lengths[0] != 1 or len(self.lengths) < 2:
            raise ConfigError(
                f"--lengths={','.join(map(str, self.lengths))}: increasing whole multiples of the "
                "run's steps starting at 1, at least two (e.g. 1,2,4)"
            )
        if self.baseline is not None and self.baseline not in self.optimizers:
            raise ConfigError(f"--baseline {self.baseline}: not one of the swept optimizers")


@dataclass
class Outcome:
    """One optimizer's search: its best config, the seeds' trials, and the path there."""

    label: str
    best: OptimizerConfig
    changes: dict[str, Any]
    seed_trials: list[Trial]
    length_trials: dict[int, list[Trial]] = field(default_factory=dict)
    """The baseline's: run length multiple -> one trial per seed."""
    path: list[dict[str, Any]] = field(default_factory=list)
    """Each accepted move: round, field, value, eval loss."""


def changes_from_defaults(cfg: OptimizerConfig) -> dict[str, Any]:
    """The fields of ``cfg`` whose values differ from its class's defaults (as YAML writes them)."""
    mine, defaults = cfg.to_dict(), type(cfg)().to_dict()
    return {k: v for k, v in mine.items() if defaults.get(k) != v}


Asked = tuple[str, list[tuple[str, Trial]]]
"""The trials a search needs next: what for (``round 2, beta1``) and each with its own note (the
value tried: ``0.95``, ``seed 1``, ``2x seed 0``), for the log."""
Search = Generator[Asked, Mapping[str, dict[str, Any]], Outcome]
"""Yields what it needs next (:data:`Asked`), receives ``{key: row}`` for those trials."""


def descend(
    label: str,
    spec: SweepSpec,
    make: Callable[[str, OptimizerConfig, int, int], Trial],
    seed: int,
    steps: int,
) -> Search:
    """One optimizer's coordinate descent, then its seeds (module docstring), as a
    :data:`Search`; returns the :class:`Outcome`."""
    current = spec.optimizers[label]
    grids = spec.grids[label]

    def losses(
        what: str, cfgs: list[OptimizerConfig], notes: list[str]
    ) -> Generator[Asked, Mapping[str, Any], list[float]]:
        trials = [make(label, c, seed, steps) for c in cfgs]
        rows = yield what, list(zip(notes, trials, strict=True))
        return [float(rows[t.key]["eval_loss"]) for t in trials]

    (best_loss,) = yield from losses("its start", [current], [f"seed {seed}"])
    path: list[dict[str, Any]] = []
    # a default grid grows while the best sits at its end (grids.beyond) and stays grown: a later
    # round tries its values around the current best again (and grows it on), rather than the
    # default grid the best may have left behind (of a doubling grid, those near it: grids.near)
    grid_values = {name: list(grid) for name, grid in grids.items()}
    grown = {name: {"low": 0, "high": 0} for name in grids}
    for rnd in range(1, spec.max_rounds + 1):
        moved = False
        for name, values in grid_values.items():
            given = (label, name) in spec.given  # used as written: every value, never grown
            while True:
                here = getattr(current, name)
                tried = values if given else near(name, values, here)
                cands = [check_value(current, name, v, label) for v in tried if v != here]
                notes = [str(getattr(c, name)) for c in cands]
                found = yield from losses(f"round {rnd}, {name}", cands, notes)
                # the best of them (the first of equals), if it beats the current by the threshold:
                # not the first that does, which a later, better value could not then replace
                if found and min(found) < best_loss - spec.threshold:
                    best_loss = min(found)
                    current, moved = cands[found.index(best_loss)], True
                    path.append(
                        {"round": rnd, "field": name, "value": getattr(current, name), "eval_loss": best_loss}
                    )
                if given:
                    break
                here = getattr(current, name)
                end = "high" if here == max(values) else "low" if here == min(values) else None
                grow = beyond(name, values, end) if end and grown[name][end] < MAX_EXTENSIONS else None
                if grow is None:
                    break
                try:
                    check_value(current, name, grow, label)
                except ConfigError:  # a grid grows only to values the config accepts
                    break
                values.insert(len(values) if end == "high" else 0, grow)
                grown[name][end] += 1
        if not moved:
            break
    seeds = [seed + i for i in range(spec.seeds)]
    seed_trials = [make(label, current, s, steps) for s in seeds]
    yield "its best", [(f"seed {t.seed}", t) for t in seed_trials]
    outcome = Outcome(label, current, changes_from_defaults(current), seed_trials, path=path)
    if label == spec.baseline:
        outcome.length_trials = {n: [make(label, current, s, steps * n) for s in seeds] for n in spec.lengths}
        longer = [(f"{n}x seed {t.seed}", t) for n, ts in outcome.length_trials.items() for t in ts]
        yield "its best at more steps", longer
    return outcome


def sweep_definition(base: SpeedrunConfig, spec: SweepSpec) -> dict[str, Any]:
    """Everything that decides a sweep's trials, as plain data (hashed to refuse a different
    sweep in the same directory)."""
    return {
        "base": base_identity(base),
        "steps": base.train.num_train_steps,
        "seed": base.train.seed,
        "optimizers": {label: cfg.to_dict() for label, cfg in spec.optimizers.items()},
        "grids": {label: {k: list(v) for k, v in g.items()} for label, g in spec.grids.items()},
        "given": sorted(map(list, spec.given)),
        "seeds": spec.seeds,
        "threshold": spec.threshold,
        "max_rounds": spec.max_rounds,
        "lengths": list(spec.lengths),
        "baseline": spec.baseline,
    }


def base_identity(base: SpeedrunConfig) -> dict[str, Any]:
    """The speedrun config a sweep's trials share: without the optimizer, seed, steps and run
    directory (each trial sets those) or the resume flags (the key of every trial hashes it)."""
    data = json.loads(res.dumps(base.to_dict()))
    for key in ("optimizer", "output_dir", "resume", "overwrite", "allow_config_change", "author"):
        data.pop(key, None)
    for key in ("seed", "num_train_steps"):
        data.get("train", {}).pop(key, None)
    return data


def claim_directory(root: Path, definition: dict[str, Any], force: bool) -> None:
    """Writes ``definition.json`` into a new sweep directory; in an existing one, checks that it is
    the same sweep (or, with ``force``, replaces it: trials whose keys match are still reused)."""
    path = root / DEFINITION
    text = res.dumps(definition) + "\n"
    if path.exists() and not force:
        old = json.loads(path.read_text())
        if old != json.loads(text):
            differing = sorted(k for k in {*old, *definition} if old.get(k) != json.loads(text).get(k))
            raise ConfigError(
                f"sweep: {root} holds a different sweep (its {', '.join(differing)} differ); "
                "choose another --output_dir or pass --force true to replace its definition "
                "(finished trials that match are reused)"
            )
        return
    res.write_atomic(path, text)


def run_search(
    base: SpeedrunConfig,
    spec: SweepSpec,
    root: Path,
    runner: Runner,
    log: Callable[[str], None] = print,
    force: bool = False,
    report: Callable[[TrialStore, dict[str, Outcome]], Any] | None = None,
) -> tuple[TrialStore, dict[str, Outcome]]:
    """Every optimizer's search, run together, then ``report(trials, outcomes)`` (the files a
    sweep writes); returns the trials and the outcomes. The sweep directory is
    :func:`~marin_optim.sweep.trials.held` meanwhile: a second sweep there is refused, and cannot
    write over the report while it is written."""
    res.make_dir(root, "output_dir")
    with held(root / LOCK, busy=f"sweep: another sweep is running in {root}; wait for it or stop it"):
        store, outcomes = _search(base, spec, root, runner, log, force)
        if report is not None:
            report(store, outcomes)
        return store, outcomes


def _search(
    base: SpeedrunConfig,
    spec: SweepSpec,
    root: Path,
    runner: Runner,
    log: Callable[[str], None],
    force: bool,
) -> tuple[TrialStore, dict[str, Outcome]]:
    definition = sweep_definition(base, spec)
    claim_directory(root, definition, force)
    store = TrialStore(root)
    base_dict = base.to_dict()
    base_hash = stable_hash(definition["base"])
    for label, origin in spec.origins.items():
        log(f"sweep: {label} starts from {origin}")
    if store.rows:
        mine, total = len(store.on_base(base_hash).rows), len(store.rows)
        if mine == total:
            log(f"sweep: {total} finished trials in {store.path} are reused")
        else:  # --force on another base: the others' rows stay, out of this sweep's report
            log(f"sweep: {mine} of the {total} finished trials in {store.path} are on this base and reused")

    def make(label: str, cfg: OptimizerConfig, seed: int, steps: int) -> Trial:
        return Trial(label, cfg.to_dict(), seed, steps, base_hash, changes_from_defaults(cfg))

    seed, steps = base.train.seed, base.train.num_train_steps
    searches = {label: descend(label, spec, make, seed, steps) for label in spec.optimizers}
    pending = {label: next(search) for label, search in searches.items()}
    outcomes: dict[str, Outcome] = {}
    while pending:
        for label, (what, asked) in pending.items():
            if todo := {t.key: note for note, t in asked if t.key not in store.rows}:
                n = len(todo)
                log(f"sweep: {label}, {what}: {', '.join(todo.values())} ({n} trial{'s' * (n > 1)})")
        run_all(runner, store, base_dict, [t for _, asked in pending.values() for _, t in asked], log)
        following = {}
        for label, (_, asked) in pending.items():
            try:
                following[label] = searches[label].send({t.key: store.rows[t.key] for _, t in asked})
            except StopIteration as stop:
                outcomes[label] = stop.value
                log(f"sweep: {label} tuned: {outcomes[label].changes or 'its defaults'}")
        pending = following
    return store, {label: outcomes[label] for label in spec.optimizers}  # the command's order


def optimizer_specs(
    names: list[str], shared: dict[str, Any], start: Sequence[str | Path] = ()
) -> tuple[dict[str, OptimizerConfig], dict[str, str]]:
    """``({name: its starting config}, {name: where that came from, with start only})``, or a
    ConfigError listing the close matches of an unknown name.

    An optimizer starts from its defaults, or, with ``start`` (directories such as other sweeps'
    ``best/``), from the optimizer section of the first ``DIR/NAME.yaml`` that exists (a speedrun
    config, as ``--config_path`` reads it; its other sections are not used). ``shared`` fields
    (``--optimizer.FIELD``, dotted for a nested config) are then set where the optimizer has them;
    one that none of them has is refused, with close matches."""
    classes = {name: OptimizerConfig.get_choice_class(name) for name in names}
    fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in classes.items()}
    anyone = set().union(*fields.values())
    for key in shared:
        top = key.split(".")[0]
        if top not in anyone:
            raise ConfigError(
                f"--optimizer.{key}: none of {', '.join(names)} has a field {top!r}"
                f"{did_you_mean(top, anyone)}"
            )
    out: dict[str, OptimizerConfig] = {}
    origins: dict[str, str] = {}
    for name, cls in classes.items():
        mine = {k: v for k, v in shared.items() if k.split(".")[0] in fields[name]}
        path = next((p for p in (Path(d) / f"{name}.yaml" for d in start) if p.is_file()), None)
        begun = _started_from(path, name, cls) if path is not None else None
        if begun is not None and not mine:
            out[name] = begun
        else:
            data = begun.to_dict() if begun is not None else {"type": name}
            out[name] = OptimizerConfig.from_dict(apply_dotted(data, mine))
        if path is not None:
            origins[name] = str(path)
        elif start:
            origins[name] = f"its defaults (no {name}.yaml in {', '.join(map(str, start))})"
    return out, origins


def _started_from(path: Path, name: str, cls: type[OptimizerConfig]) -> OptimizerConfig:
    """The optimizer of the speedrun config in ``path``, which must be a ``name``."""
    import yaml

    from marin_optim.speedrun.config import SpeedrunConfig

    try:
        cfg = SpeedrunConfig.from_yaml(path.read_text()).optimizer
    except (ConfigError, yaml.YAMLError) as e:
        raise ConfigError(f"--start: {path}: {' '.join(str(e).split())}") from None
    if type(cfg) is not cls:
        raise ConfigError(
            f"--start: {path} holds a {cfg.kind()} config, not {name} "
            "(each optimizer starts from the file named after it)"
        )
    return cfg
