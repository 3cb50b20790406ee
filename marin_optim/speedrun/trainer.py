"""The speedrun trainer: a Levanter-style loop around one jitted, buffer-donating train step.

``run_speedrun(cfg)`` does, in order:

1. ``preflight``: every check that needs the machine (device count, mesh, divisibility of the
   batch and the sharded axes, data files, the run directory, a resumed config) — bad input fails
   here with one ``ConfigError`` line, before anything is compiled;
2. loads the data and builds the optimizer with ``cfg.optimizer.build(num_train_steps)``;
3. initialises (or restores) float32 parameters and optimizer state directly into their shardings;
4. compiles the step ahead of time (timed separately), evaluates, and trains: each step computes
   the loss and gradients in the compute dtype (microbatches scanned for gradient accumulation),
   calls ``tx.update(grads, state, params, loss=loss, obj_fn=obj_fn)`` and logs every value of
   ``hyperparams(state)``;
5. evaluates and checkpoints on schedule, and at the end publishes results, metrics, config and
   the loss curve.

The step loop is :class:`Trainer`; what happens around a step (the training-time clock, the
progress bar, metrics rows, evaluation, checkpoints) are its collaborators in
:mod:`marin_optim.speedrun.hooks`.

The host never waits on the step it just dispatched: metrics of step ``s`` are read after step
``s + 1`` is queued.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import haliax as hax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from marin_optim.config import OptimizerConfig, config_differences, resolve_resume
from marin_optim.errors import ConfigError
from marin_optim.optimizers.schedule_free import eval_params
from marin_optim.runtime import process_setup, setup_process
from marin_optim.speedrun import results as res
from marin_optim.speedrun.checkpoint import Checkpointer
from marin_optim.speedrun.config import RUN_CONTROL_FIELDS, SpeedrunConfig, TrainConfig
from marin_optim.speedrun.data import SequenceSampler, TokenDataset, check_files_exist, load_dataset
from marin_optim.speedrun.hooks import CheckpointHook, Clock, EvalHook, MetricsHook, ProgressBar, TrainState
from marin_optim.speedrun.mesh import (
    batch_sharding,
    check_divisibility,
    make_mesh,
    replicated,
    sharding_tree,
)
from marin_optim.speedrun.model import VOCAB_SIZE, Transformer, cast_floating, next_token_loss
from marin_optim.speedrun.plots import Curve, plot_curves
from marin_optim.state import hyperparams, with_schedule_step
from marin_optim.transforms.distributed import undivided_state
from marin_optim.transforms.guards import NonFiniteError

Hook = Callable[[int], None]
"""Called with the step number after each step's logging, evaluation and checkpoint."""

Perturb = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
"""``perturb(step, loss, grads) -> (loss, grads)``, traced into the train step between the
gradient and the optimizer update (fault-injection tests: a NaN gradient or a loss spike at a
given step)."""


@dataclass
class SpeedrunResult:
    """What a finished run returns: the results ``run_info`` and the final trained state."""

    run_info: dict[str, Any]
    run_dir: Path
    params: Any = None
    opt_state: Any = None


@dataclass(frozen=True)
class Plan:
    """Everything preflight resolved from the config and the machine."""

    mesh_shape: tuple[int, int]
    num_devices: int
    compute_dtype: Any
    run_dir: Path
    resume_step: int | None
    resume_meta: dict[str, Any] | None
    optimizer: OptimizerConfig
    """The optimizer the run uses: the config's, or on resume what ``optimizer_resume`` resolved."""
    reset_optimizer_state: bool = False
    """Resume with the checkpoint's parameters and a fresh optimizer state."""


# ---- setup ------------------------------------------------------------------------------


def initialize_distributed(cfg: SpeedrunConfig) -> None:
    """``jax.distributed.initialize`` for multi-process runs (gloo collectives on CPU)."""
    d = cfg.distributed
    if not d.enabled or jax.distributed.is_initialized():
        return
    # Cross-process collectives between CPU devices need gloo; accelerators use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=d.coordinator_address, num_processes=d.num_processes, process_id=d.process_id
    )


def resolve_compute_dtype(name: str) -> Any:
    if name == "float32":
        return jnp.float32
    if name == "bfloat16":
        return jnp.bfloat16
    # XLA:CPU emulates bfloat16 matmuls (measured ~3.6x slower than float32 here).
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def prepare(cfg: SpeedrunConfig) -> Plan:
    """The process set up for ``cfg`` (:func:`marin_optim.runtime.setup_process`, then
    ``jax.distributed`` where it runs on several), then :func:`preflight`; each step idempotent, so
    a comparison checks all its runs before the first trains."""
    setup_process(program=False)
    initialize_distributed(cfg)
    return preflight(cfg)


def preflight(cfg: SpeedrunConfig) -> Plan:
    """Checks everything that depends on the machine; raises one ConfigError line on bad input."""
    t = cfg.train
    device_count = jax.device_count()
    data, model = t.mesh.resolve(device_count)
    if t.microbatch_size % data:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: the microbatch of {t.microbatch_size} sequences "
            f"(batch_size / grad_accum={t.grad_accum}) is not divisible by the data axis "
            f"(train.mesh.data={data})"
        )
    m = cfg.model
    mesh_shape = {"data": data, "model": model}
    sizes = {
        "embed": m.hidden_dim,
        "mlp": m.intermediate_dim,
        "kv_heads": m.num_kv_heads,
        "vocab": VOCAB_SIZE,
    }
    check_divisibility(sizes, t.mesh.parameter_mapping(), mesh_shape, "train.mesh")
    check_divisibility(sizes, t.mesh.compute_mapping(), mesh_shape, "train.mesh")
    check_files_exist(cfg.data)

    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / res.CHECKPOINTS
    latest = _latest_checkpoint(ckpt_dir)
    resume_step, resume_meta = None, None
    optimizer, reset = cfg.optimizer, False
    if cfg.resume and latest is not None:
        ckpt = Checkpointer(ckpt_dir, keep=t.checkpoints_to_keep)
        try:
            resume_meta = ckpt.read_meta(latest)
            saved_arrays = ckpt.saved_arrays(latest)
        finally:
            ckpt.close()
        resume_step = latest
        optimizer, reset = resolve_resumed_optimizer(cfg, resume_meta.get("config", {}), latest)
        check_state_fits(cfg.model, None if reset else optimizer, t.num_train_steps, saved_arrays, latest)
        if reset:
            check_schedule_can_continue(cfg.model, optimizer, t.num_train_steps)
    elif not cfg.resume and latest is not None and not cfg.overwrite:
        unfinished = (run_dir / res.PARTIAL_METRICS).exists() or not (run_dir / res.RESULTS).exists()
        if unfinished:
            raise ConfigError(
                f"output_dir={str(run_dir)!r} holds an unfinished run (checkpoint at step {latest}); "
                "pass --resume true to continue it or --overwrite true to start over"
            )
    if jax.process_index() == 0:  # one process probes: another's removal cannot race its writes
        res.make_dir(run_dir, "output_dir", keep=False)  # writable, and nothing left behind
    return Plan(
        mesh_shape=(data, model),
        num_devices=data * model,
        compute_dtype=resolve_compute_dtype(t.compute_dtype),
        run_dir=run_dir,
        resume_step=resume_step,
        resume_meta=resume_meta,
        optimizer=optimizer,
        reset_optimizer_state=reset,
    )


def resolve_resumed_optimizer(
    cfg: SpeedrunConfig, saved: dict[str, Any], step: int
) -> tuple[OptimizerConfig, bool]:
    """The optimizer a resumed run uses and whether its state starts afresh (Megatron/OLMo-core rules).

    Fails with one line listing every differing field: model, data and train fields unless
    ``allow_config_change``; optimizer fields unless ``optimizer_resume`` says whose values win.
    """
    problems = []
    diffs = [
        f"{key}: {a!r} -> {b!r}"
        for key, (a, b) in config_differences(saved, cfg, ignore=(*RUN_CONTROL_FIELDS, "optimizer")).items()
    ]
    if diffs and not cfg.allow_config_change:
        listed = "; ".join(diffs)
        problems.append(f"{len(diffs)} field(s) differ: {listed} (pass --allow_config_change true to accept)")
    try:
        saved_optimizer = OptimizerConfig.from_dict(saved.get("optimizer") or {})
    except ConfigError as e:
        raise ConfigError(f"resume: the checkpoint's optimizer config cannot be loaded: {e}") from None
    optimizer, reset = cfg.optimizer, cfg.reset_optimizer_state
    same_type = type(saved_optimizer) is type(cfg.optimizer)
    if same_type and cfg.optimizer_resume == "strict":
        opt_diffs = config_differences(saved_optimizer, cfg.optimizer)
        if opt_diffs:
            listed = "; ".join(f"optimizer.{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(opt_diffs.items()))
            problems.append(
                f"the optimizer differs: {listed} (pass --optimizer_resume override to use these "
                "values, or checkpoint to keep the checkpoint's)"
            )
    else:
        try:
            optimizer, reset = resolve_resume(
                saved_optimizer, cfg.optimizer, cfg.optimizer_resume, cfg.reset_optimizer_state
            )
        except ConfigError as e:
            problems.append(str(e).replace("reset_optimizer_state=true", "--reset_optimizer_state true"))
    if problems:
        raise ConfigError(f"resume from the checkpoint at step {step}: " + "; ".join(problems))
    return optimizer, reset


def check_state_fits(
    model: Any,
    optimizer: OptimizerConfig | None,
    num_train_steps: int,
    saved_arrays: dict[str, tuple[tuple[int, ...], str]],
    step: int,
) -> None:
    """Fails (one line, before compiling) if the checkpoint's arrays do not match what this
    model and optimizer hold, e.g. after switching to bf16 moments or adding a parameter group.
    ``optimizer=None``: only the parameters are restored, so only they are compared."""
    from marin_optim.speedrun.checkpoint import flatten_state

    params = abstract_params(model)
    opt_state = None if optimizer is None else jax.eval_shape(optimizer.build(num_train_steps).init, params)
    wanted = {
        name: (tuple(x.shape), jnp.dtype(x.dtype).name)
        for name, x in flatten_state({"params": params, "opt_state": opt_state}).items()
    }
    if optimizer is None:
        saved_arrays = {k: v for k, v in saved_arrays.items() if k.startswith("params.")}
    if wanted == saved_arrays:
        return
    missing = sorted(set(wanted) - set(saved_arrays))
    extra = sorted(set(saved_arrays) - set(wanted))
    changed = sorted(k for k in set(wanted) & set(saved_arrays) if wanted[k] != saved_arrays[k])
    parts = []
    for label, names in (("not in the checkpoint", missing), ("only in it", extra), ("reshaped", changed)):
        if names:
            more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
            parts.append(f"{label}: {', '.join(names[:4])}{more}")
    if optimizer is None:
        raise ConfigError(
            f"resume from the checkpoint at step {step}: the saved parameters do not fit this model "
            f"({'; '.join(parts)})"
        )
    raise ConfigError(
        f"resume from the checkpoint at step {step}: the saved state does not fit this model and "
        f"optimizer ({'; '.join(parts)}); pass --reset_optimizer_state true to keep only the parameters"
    )


def check_schedule_can_continue(model: Any, optimizer: OptimizerConfig, num_train_steps: int) -> None:
    """A reset optimizer state continues the schedule at the checkpoint's step, which needs the
    step count that ``inject_hyperparams`` keeps (every built-in optimizer has one)."""
    opt_state = jax.eval_shape(optimizer.build(num_train_steps).init, abstract_params(model))
    try:
        jax.eval_shape(functools.partial(with_schedule_step, step=1), opt_state)
    except ValueError:
        raise ConfigError(
            f"reset_optimizer_state=true: the state of optimizer {type(optimizer).__name__} has no "
            "inject_hyperparams step count, so its schedule could not continue at the checkpoint's step; "
            "build it with optax.inject_hyperparams (as OptimizerConfig.build does)"
        ) from None


def abstract_params(model: Any) -> Transformer:
    """The model's parameters as shapes and dtypes (nothing is allocated or compiled)."""
    return jax.eval_shape(lambda key: Transformer.init(model, key=key), jax.random.PRNGKey(0))


def _latest_checkpoint(ckpt_dir: Path) -> int | None:
    if not ckpt_dir.is_dir():
        return None
    steps = [int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def eval_plan(cfg: SpeedrunConfig, dataset: TokenDataset) -> np.ndarray:
    """The fixed validation sequences: evenly spaced over the held-out stream, ``[n, seq_len + 1]``."""
    t = cfg.train
    sampler = SequenceSampler(dataset.val, t.seq_len, dataset.stride, seed=0, shuffle=False)
    micro = t.microbatch_size
    wanted = math.ceil(t.eval_sequences / micro) * micro
    available = (sampler.num_chunks // micro) * micro
    if available == 0:
        raise ConfigError(
            f"data: the validation split holds {sampler.num_chunks} sequence(s) of {t.seq_len + 1} bytes, "
            f"fewer than one eval batch of {micro}; raise data.val_fraction or lower train.seq_len/batch_size"
        )
    n = min(wanted, available)
    ids = np.linspace(0, sampler.num_chunks - 1, n).round().astype(np.int64)
    starts = ids * dataset.stride
    return dataset.val[starts[:, None] + np.arange(t.seq_len + 1)[None, :]]


# ---- the compiled functions ---------------------------------------------------------------


def make_step_functions(
    cfg: SpeedrunConfig,
    tx: optax.GradientTransformation,
    compute_dtype: Any,
    mesh: jax.sharding.Mesh,
    perturb: Perturb | None = None,
) -> tuple[Callable, Callable, Callable, Any, Any]:
    """``(init, train_step, eval_loss, param_shardings, opt_shardings)``, jitted with shardings.

    ``train_step(params, opt_state, batch, step)`` donates params and state; ``step`` (an int32
    scalar) only matters to ``perturb``.
    """
    t, m = cfg.train, cfg.model
    param_mapping = t.mesh.parameter_mapping()
    compute_mapping = t.mesh.compute_mapping()

    def init_params(key: jax.Array) -> Transformer:
        return Transformer.init(m, key=key)

    abstract_params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    param_sh = sharding_tree(abstract_params, param_mapping, mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = sharding_tree(abstract_opt, param_mapping, mesh)
    batch_sh = batch_sharding(mesh)
    rep = replicated(mesh)

    def micro_loss(params: Transformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        with hax.axis_mapping(compute_mapping):
            return next_token_loss(cast_floating(params, compute_dtype), inputs, targets)

    grad_fn = jax.value_and_grad(micro_loss)

    def train_step(params: Transformer, opt_state: Any, batch: jax.Array, step: jax.Array):
        tokens = batch.astype(jnp.int32)
        inputs, targets = tokens[..., :-1], tokens[..., 1:]
        if t.grad_accum == 1:
            loss, grads = grad_fn(params, inputs[0], targets[0])
        else:

            def accumulate(carry, xy):
                loss_sum, grad_sum = carry
                loss, grads = grad_fn(params, *xy)
                return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss, grads), _ = jax.lax.scan(
                accumulate, (jnp.zeros((), jnp.float32), zeros), (inputs, targets)
            )
            loss = loss / t.grad_accum
            grads = jax.tree.map(lambda g: g / t.grad_accum, grads)
        if perturb is not None:
            loss, grads = perturb(step, loss, grads)
        grads = hax.shard(grads, param_mapping)

        def obj_fn(p: Transformer) -> jax.Array:
            # The loss on this step's whole batch as a function of the parameters (SAM-style
            # optimizers differentiate it); traced only if the optimizer calls it.
            return jnp.mean(jax.lax.map(lambda xy: micro_loss(p, *xy), (inputs, targets)))

        updates, opt_state = tx.update(grads, opt_state, params, loss=loss, obj_fn=obj_fn)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **hyperparams(opt_state)}

    def eval_loss(params: Transformer, opt_state: Any, batch: jax.Array) -> jax.Array:
        # Schedule-free and averaging optimizers are evaluated at their averaged point.
        params = eval_params(opt_state, params)
        tokens = batch.astype(jnp.int32)
        return micro_loss(params, tokens[0, :, :-1], tokens[0, :, 1:])

    init = jax.jit(init_params, out_shardings=param_sh)
    step = jax.jit(
        train_step,
        in_shardings=(param_sh, opt_sh, batch_sh, rep),
        out_shardings=(param_sh, opt_sh, rep),
        donate_argnums=(0, 1),
    )
    evaluate = jax.jit(eval_loss, in_shardings=(param_sh, opt_sh, batch_sh), out_shardings=rep)
    return init, step, evaluate, param_sh, opt_sh


def global_batch(tokens: np.ndarray, grad_accum: int, sharding: jax.sharding.Sharding) -> jax.Array:
    """``[batch, seq_len + 1]`` host bytes -> a global ``[grad_accum, micro, seq_len + 1]`` array.

    Every process holds the same host batch (it is cheap to produce) and contributes the rows its
    devices own, so this works unchanged across processes.
    """
    shaped = tokens.reshape(grad_accum, -1, tokens.shape[-1])
    return jax.make_array_from_callback(shaped.shape, sharding, lambda idx: shaped[idx])


# ---- the run ------------------------------------------------------------------------------


def run_speedrun(
    cfg: SpeedrunConfig,
    *,
    hooks: Sequence[Hook] = (),
    log: Callable[[str], None] | None = None,
    keep_state: bool = False,
    perturb: Perturb | None = None,
) -> SpeedrunResult:
    """Runs (or resumes) the speedrun described by ``cfg`` and returns its results.

    ``hooks`` are called with each finished step (tests use them to kill a run). ``keep_state``
    returns the final parameters and optimizer state in the result. ``perturb`` changes the loss
    and gradients inside the step (fault injection). Raises :class:`NonFiniteError` after
    ``optimizer.max_nonfinite_steps`` non-finite steps in a row; nothing is published then.

    Sets the process up first, as every entry point does (:func:`marin_optim.runtime.setup_process`:
    XLA:CPU multi-output fusion unless a JAX computation already ran; huge pages need a program).
    """
    plan = prepare(cfg)
    cfg = cfg.replace(optimizer=plan.optimizer)  # on resume: what optimizer_resume resolved
    is_main = jax.process_index() == 0
    say = (log or _print) if is_main else (lambda _msg: None)
    t = cfg.train
    finished = plan.run_dir / res.RESULTS
    if (
        plan.resume_step is not None
        and plan.resume_step >= t.num_train_steps
        and finished.exists()
        and not (plan.run_dir / res.PARTIAL_METRICS).exists()
        and not config_differences(  # the results are this checkpoint's run's, not an earlier one's
            res.read_results(plan.run_dir).get("config", {}),
            (plan.resume_meta or {}).get("config", {}),
            ignore=RUN_CONTROL_FIELDS,
        )
    ):
        say(f"{plan.run_dir} already finished {plan.resume_step} steps; results: {finished}")
        return SpeedrunResult(run_info=res.read_results(plan.run_dir), run_dir=plan.run_dir)

    dataset = load_dataset(cfg.data, t.seq_len, t.seed)
    eval_tokens = eval_plan(cfg, dataset)
    sampler = SequenceSampler(dataset.train, t.seq_len, dataset.stride, seed=_data_seed(cfg))
    if sampler.num_chunks < 1:
        raise ConfigError(
            f"data: the training split has {len(dataset.train)} bytes, "
            f"fewer than one sequence of {t.seq_len + 1}"
        )
    if plan.resume_meta is not None and plan.resume_meta.get("data_fingerprint") != dataset.fingerprint:
        if not cfg.allow_config_change:
            raise ConfigError(
                "resume: the data differ from the checkpoint's "
                f"(fingerprint {plan.resume_meta.get('data_fingerprint')} "
                f"-> {dataset.fingerprint}); pass --allow_config_change true to continue anyway"
            )
    tx = cfg.optimizer.build(t.num_train_steps)

    say(_header(cfg, plan, dataset))
    whole = undivided_state(jax.eval_shape(tx.init, abstract_params(cfg.model)), plan.num_devices)
    if whole:  # said once: these stay whole on every device (correct, but not divided)
        say(
            f"  optimizer state kept whole on each of the {plan.num_devices} devices (no axis of "
            f"theirs divides by {plan.num_devices}): {', '.join(whole)}"
        )
    say("resolved config:\n" + _indent(cfg.to_yaml()))
    table = cfg.optimizer.param_table(abstract_params(cfg.model))
    say("parameters (optimizer groups, weight decay):\n" + _indent(table))

    mesh = make_mesh(t.mesh)
    with hax.partitioning.set_mesh(mesh):
        setup = RunSetup(cfg, plan, dataset, sampler, eval_tokens, tx, mesh, say, is_main)
        return _train(setup, hooks, keep_state, perturb)


@dataclass(frozen=True)
class RunSetup:
    """What ``run_speedrun`` prepared before anything is compiled."""

    cfg: SpeedrunConfig
    plan: Plan
    dataset: TokenDataset
    sampler: SequenceSampler
    eval_tokens: np.ndarray
    """The fixed validation sequences (:func:`eval_plan`)."""
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    say: Callable[[str], None]
    """Where messages go (nothing on processes other than the main one)."""
    is_main: bool


class Trainer:
    """The step loop, in Levanter's shape: each iteration runs the compiled step, hands its metrics
    to :class:`MetricsHook` (written one step late), and on schedule pauses the :class:`Clock` for
    the :class:`EvalHook` and the :class:`CheckpointHook`; the user's hooks then see the step."""

    def __init__(
        self,
        *,
        step_fn: Callable[..., tuple[Any, Any, Any]],
        next_batch: Callable[[int], jax.Array],
        mesh: jax.sharding.Mesh,
        train: TrainConfig,
        clock: Clock,
        progress: ProgressBar,
        metrics: MetricsHook,
        evals: EvalHook,
        checkpoints: CheckpointHook,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.step_fn = step_fn
        """The compiled ``train_step(params, opt_state, batch, step) -> (params, opt_state, metrics)``."""
        self.next_batch = next_batch
        """The global batch that starts at a number of sequences consumed."""
        self.mesh = mesh
        self.train = train
        self.clock = clock
        self.progress = progress
        self.metrics = metrics
        self.evals = evals
        self.checkpoints = checkpoints
        self.hooks = hooks

    def fit(self, state: TrainState, batch: jax.Array) -> None:
        """Trains ``state`` (in place) from ``state.step + 1`` to the last step; ``batch`` is the first
        step's. On any failure the partial metrics stay for ``--resume`` and nothing is published."""
        self.clock.resume()
        try:
            self._loop(state, batch)
        except BaseException:
            self.metrics.log.close()
            raise
        finally:
            self.progress.close()
            self.checkpoints.close()

    def _loop(self, state: TrainState, batch: jax.Array) -> None:
        t = self.train
        for step in range(state.step + 1, t.num_train_steps + 1):
            state.params, state.opt_state, values = self.step_fn(
                state.params, state.opt_state, batch, _step_array(step, self.mesh)
            )
            state.step = step
            state.consumed += t.batch_size
            self.clock.count(t.tokens_per_step)
            self.metrics.push(step, values)
            self.progress.update()
            is_last = step == t.num_train_steps
            do_eval = self.evals.due(step, is_last)
            do_ckpt = self.checkpoints.due(step, is_last)
            if not is_last:  # queued before the host blocks on anything below
                batch = self.next_batch(state.consumed)
            if do_eval or do_ckpt:
                self._pause(state)
                if do_eval:
                    self._evaluate(state)
                if do_ckpt:
                    self.checkpoints.save(state, self.clock.training_time)
                self.clock.resume()
            for hook in self.hooks:
                hook(step)
        self._pause(state)

    def _pause(self, state: TrainState) -> None:
        """Waits for the device, writes the held metrics row and stops the clock."""
        jax.block_until_ready(state.params)
        self.metrics.drain()
        self.clock.pause()

    def _evaluate(self, state: TrainState) -> None:
        loss = self.evals.evaluate(state.step, state)
        self.progress.message(
            f"step {state.step}: train_loss {self.metrics.last_loss:.4f}  "
            f"eval_loss {loss:.4f} (bpb {loss / math.log(2):.3f})"
        )


def _train(
    setup: RunSetup, hooks: Sequence[Hook], keep_state: bool, perturb: Perturb | None
) -> SpeedrunResult:
    """Compiles, initialises or restores the state, evaluates it at step 0, trains, and publishes."""
    cfg, t, say = setup.cfg, setup.cfg.train, setup.say
    wall_start = time.perf_counter()
    init, step_fn, eval_fn, param_sh, opt_sh = make_step_functions(
        cfg, setup.tx, setup.plan.compute_dtype, setup.mesh, perturb
    )
    batch_sh = batch_sharding(setup.mesh)
    checkpointer = _open_checkpointer(setup)
    state, training_time = _initial_state(setup, checkpointer, init, param_sh, opt_sh)
    log = res.MetricsLog(setup.plan.run_dir, enabled=setup.is_main)
    history = log.open(keep_up_to_step=state.step if setup.plan.resume_step is not None else None)
    curve = Curve.from_rows(history)
    eval_batches = [
        global_batch(setup.eval_tokens[i : i + t.microbatch_size], 1, batch_sh)
        for i in range(0, len(setup.eval_tokens), t.microbatch_size)
    ]
    evals = EvalHook(eval_fn, eval_batches, log, curve, setup.dataset.loss_floor, t.eval_interval)
    next_batch = functools.partial(_batch_at, setup.sampler, t, batch_sh)

    compile_start = time.perf_counter()
    batch = next_batch(state.consumed)
    step_index = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(setup.mesh))
    compiled = step_fn.lower(state.params, state.opt_state, batch, step_index).compile()
    compile_time = time.perf_counter() - compile_start
    say(f"compiled the train step in {compile_time:.1f}s")
    if state.step == 0:
        loss0 = evals.evaluate(0, state)
        say(f"step 0: eval_loss {loss0:.4f} (bpb {loss0 / math.log(2):.3f})")

    progress = ProgressBar(t.num_train_steps, state.step, enabled=setup.is_main, say=say)
    clock = Clock(training_time)
    metrics = MetricsHook(log, curve, clock, progress, t.tokens_per_step, cfg.optimizer.max_nonfinite_steps)
    checkpoints = CheckpointHook(checkpointer, t.checkpoint_interval, cfg, setup.dataset.fingerprint)
    trainer = Trainer(
        step_fn=compiled,
        next_batch=next_batch,
        mesh=setup.mesh,
        train=t,
        clock=clock,
        progress=progress,
        metrics=metrics,
        evals=evals,
        checkpoints=checkpoints,
        hooks=hooks,
    )
    trainer.fit(state, batch)
    run_info = _finish(setup, trainer, state, compile_time, wall_start)
    return SpeedrunResult(
        run_info=run_info,
        run_dir=setup.plan.run_dir,
        params=state.params if keep_state else None,
        opt_state=state.opt_state if keep_state else None,
    )


def _open_checkpointer(setup: RunSetup) -> Checkpointer:
    """The run's checkpointer, once every process has read the run directory; a fresh run first
    removes an earlier (finished or overwritten) run's checkpoints."""
    ckpt_dir = setup.plan.run_dir / res.CHECKPOINTS
    # Every process has finished reading the run directory (preflight) before anyone changes it.
    _sync("marin_optim_speedrun_preflight")
    if setup.plan.resume_step is None:
        if setup.is_main:  # a finished (or overwritten) earlier run's checkpoints: out of the way at
            # once (a rename), then deleted, so a kill meanwhile leaves no half-deleted step to resume
            gone = ckpt_dir.with_name(ckpt_dir.name + ".removing")
            if ckpt_dir.exists():
                shutil.rmtree(gone, ignore_errors=True)
                ckpt_dir.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        _sync("marin_optim_speedrun_clear")
    return Checkpointer(ckpt_dir, keep=setup.cfg.train.checkpoints_to_keep)


def _initial_state(
    setup: RunSetup, checkpointer: Checkpointer, init: Callable, param_sh: Any, opt_sh: Any
) -> tuple[TrainState, float]:
    """``(state, training time so far)``: freshly initialised, or restored from the plan's checkpoint
    (with ``reset_optimizer_state``: its parameters, a fresh optimizer state, the schedule at its step)."""
    cfg, plan = setup.cfg, setup.plan
    ckpt_dir = plan.run_dir / res.CHECKPOINTS
    params = init(jax.random.PRNGKey(cfg.train.seed))
    opt_state = jax.jit(setup.tx.init, in_shardings=(param_sh,), out_shardings=opt_sh)(params)
    if plan.resume_step is None:
        if cfg.resume:
            setup.say(f"resume: no checkpoint in {ckpt_dir}; starting from step 0")
        return TrainState(params, opt_state), 0.0
    if plan.reset_optimizer_state:
        params, _, meta = checkpointer.restore(plan.resume_step, params, None)
    else:
        params, opt_state, meta = checkpointer.restore(plan.resume_step, params, opt_state)
    state = TrainState(params, opt_state, step=int(meta["step"]), consumed=int(meta["sequences_consumed"]))
    if plan.reset_optimizer_state:  # fresh moments, but the schedule continues at the checkpoint's step
        state.opt_state = jax.jit(
            functools.partial(with_schedule_step, step=state.step), donate_argnums=0, out_shardings=opt_sh
        )(state.opt_state)
    setup.say(
        f"resumed from {ckpt_dir} at step {state.step} ({state.consumed} sequences consumed)"
        + (", optimizer state reset" if plan.reset_optimizer_state else "")
        + (f", optimizer values from {cfg.optimizer_resume}" if cfg.optimizer_resume != "strict" else "")
    )
    return state, float(meta["training_time"])


def _finish(
    setup: RunSetup, trainer: Trainer, state: TrainState, compile_time: float, wall_start: float
) -> dict[str, Any]:
    """The final losses and ``run_info``; the main process publishes the loss curve, metrics.jsonl,
    config.yaml and results.json (in that order, results last)."""
    cfg, t, plan, dataset = setup.cfg, setup.cfg.train, setup.plan, setup.dataset
    curve, log = trainer.metrics.curve, trainer.metrics.log
    known = bool(curve.eval_steps) and curve.eval_steps[-1] == t.num_train_steps
    # the main process alone read a resumed run's history: every process takes its answer
    known, final_eval = _from_main(known, curve.eval_loss[-1] if known else math.nan)
    if not known:  # resumed at the very end: evaluate what was restored (every process)
        final_eval = trainer.evals.evaluate(t.num_train_steps, state)
    if not math.isfinite(final_eval):  # diverged with the guard off: a good result stays
        log.close()
        raise NonFiniteError(
            f"final eval loss {final_eval}: the run diverged; nothing published (its metrics so far: "
            f"{plan.run_dir / res.PARTIAL_METRICS})"
        )
    last_loss = trainer.metrics.last_loss
    final_train = (
        last_loss if not math.isnan(last_loss) else (curve.train_loss[-1] if curve.train_loss else math.nan)
    )
    wall_time = time.perf_counter() - wall_start
    run_info = build_run_info(
        cfg,
        plan,
        dataset,
        state.params,
        trainer.clock.training_time,
        compile_time,
        wall_time,
        final_train,
        final_eval,
        curve,
    )
    if not setup.is_main:
        log.close()
    else:
        plot_curves(
            plan.run_dir / res.PLOT,
            {cfg.optimizer_name: curve},
            title=f"{cfg.optimizer_name} / model {cfg.model.name} / data {cfg.data.resolved_source}",
            loss_floor=dataset.loss_floor,
        )
        log.finish()
        rerun = cfg.replace(  # reruns the run from the start, wherever it is run
            resume=False, overwrite=False, allow_config_change=False, reset_optimizer_state=False,
            optimizer_resume="strict",
        )  # fmt: skip
        res.write_atomic(plan.run_dir / res.CONFIG, rerun.to_yaml())
        path = res.write_results(plan.run_dir, run_info)
        setup.say(_summary(run_info, path))
    _sync("marin_optim_speedrun_done")
    return run_info


# ---- results ------------------------------------------------------------------------------


def count_parameters(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def build_run_info(
    cfg: SpeedrunConfig,
    plan: Plan,
    dataset: TokenDataset,
    params: Any,
    train_time: float,
    compile_time: float,
    wall_time: float,
    final_train_loss: float,
    eval_loss: float,
    curve: Curve,
) -> dict[str, Any]:
    """Marin's speedrun fields, plus what a byte-level CPU run can add (bpb, entropy floor)."""
    t, m = cfg.train, cfg.model
    total_tokens = t.num_train_steps * t.tokens_per_step
    flops_per_token = m.flops_per_token(t.seq_len)
    device = jax.devices()[0]
    process = process_setup()
    update_path, update_path_reason = cfg.optimizer.update_path_plan()
    info: dict[str, Any] = {
        "author": dataclasses.asdict(cfg.author),
        "description": cfg.description,
        "optimizer": cfg.optimizer_name,
        "config": cfg.to_dict(),
        "model_size": count_parameters(params),
        "total_tokens": total_tokens,
        "model_flops_per_token": flops_per_token,
        "model_flops": 3 * flops_per_token * total_tokens,
        "num_devices": plan.num_devices,
        "num_processes": jax.process_count(),
        "mesh": {"data": plan.mesh_shape[0], "model": plan.mesh_shape[1]},
        "device_type": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "xla_cpu_multi_output_fusion": device.platform == "cpu" and process.cpu_multi_output_fusion,
        "malloc_hugepages": process.malloc_hugepages,
        "update_path": update_path,
        "update_path_reason": update_path_reason,
        "device_flops": None,
        "training_hardware_flops": None,
        "compute_dtype": jnp.dtype(plan.compute_dtype).name,
        "training_time": train_time,
        "training_time_in_minutes": train_time / 60,
        "compile_time": compile_time,
        "wall_time": wall_time,
        "tokens_per_second": total_tokens / train_time if train_time > 0 else None,
        "final_train_loss": final_train_loss,
        "eval_loss": eval_loss,
        "eval_bpb": eval_loss / math.log(2),
        "initial_eval_loss": curve.eval_loss[0] if curve.eval_steps and curve.eval_steps[0] == 0 else None,
        "eval_steps": curve.eval_steps,
        "eval_losses": curve.eval_loss,
        "data": {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "train_bytes": len(dataset.train),
            "val_bytes": len(dataset.val),
            "documents": list(dataset.num_documents),
        },
        "loss_floor": dataset.loss_floor,
        "eval_gap_to_floor": None if dataset.loss_floor is None else eval_loss - dataset.loss_floor,
        "run_completion_timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__},
    }
    return info


# ---- small helpers ------------------------------------------------------------------------


def _batch_at(
    sampler: SequenceSampler, train: TrainConfig, sharding: jax.sharding.Sharding, consumed: int
) -> jax.Array:
    """The global training batch that starts after ``consumed`` sequences."""
    return global_batch(sampler.sequences(consumed, train.batch_size), train.grad_accum, sharding)


def _step_array(step: int, mesh: jax.sharding.Mesh) -> jax.Array:
    return jax.device_put(np.int32(step), replicated(mesh))


def _data_seed(cfg: SpeedrunConfig) -> int:
    return cfg.train.seed if cfg.data.seed is None else cfg.data.seed


def _from_main(known: bool, value: float) -> tuple[bool, float]:
    """``(known, value)`` as the main process has them, on every process."""
    if jax.process_count() == 1:
        return known, value
    from jax.experimental import multihost_utils

    flag, number = multihost_utils.broadcast_one_to_all(np.array([float(known), value], np.float64))
    return bool(flag), float(number)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _print(msg: str) -> None:
    print(msg, flush=True)


def _indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.rstrip().splitlines())


def _header(cfg: SpeedrunConfig, plan: Plan, dataset: TokenDataset) -> str:
    m, t = cfg.model, cfg.train
    lines = [
        f"marin-optim speedrun: {cfg.optimizer_name} on {m.describe()}",
        f"  data: {dataset.name}  train {len(dataset.train) / 1e6:.1f} MB  "
        f"val {len(dataset.val) / 1e6:.2f} MB"
        + (f"  entropy floor {dataset.loss_floor:.4f} nats" if dataset.loss_floor is not None else ""),
        f"  {t.num_train_steps} steps x {t.batch_size} x {t.seq_len} bytes = "
        f"{t.num_train_steps * t.tokens_per_step / 1e6:.2f}M tokens; grad_accum {t.grad_accum}",
        f"  mesh: data={plan.mesh_shape[0]} model={plan.mesh_shape[1]} "
        f"over {jax.process_count()} process(es), {jax.devices()[0].platform}; "
        f"compute {jnp.dtype(plan.compute_dtype).name}, params/optimizer float32; {_setup_words()}",
        "  update path: {} ({})".format(*cfg.optimizer.update_path_plan()),
        f"  run dir: {plan.run_dir}",
    ]
    return "\n".join(lines)


def _setup_words() -> str:
    """What :func:`marin_optim.runtime.process_setup` gave, in the header's words."""
    setup = process_setup()
    if jax.default_backend() == "cpu":
        return setup.describe()
    return f"malloc huge pages {'on' if setup.malloc_hugepages else 'off'}"


def _summary(info: dict[str, Any], path: Path) -> str:
    lines = [
        f"done: eval_loss {info['eval_loss']:.4f} (bpb {info['eval_bpb']:.3f})"
        + (f", initial {info['initial_eval_loss']:.4f}" if info["initial_eval_loss"] is not None else "")
        + (
            f", gap to floor {info['eval_gap_to_floor']:.4f}" if info["eval_gap_to_floor"] is not None else ""
        ),
        f"  final train loss {info['final_train_loss']:.4f}; training {info['training_time']:.1f}s "
        f"({info['tokens_per_second']:,.0f} tokens/s), compile {info['compile_time']:.1f}s, "
        f"wall {info['wall_time']:.1f}s",
        f"  results: {path}",
    ]
    return "\n".join(lines)
