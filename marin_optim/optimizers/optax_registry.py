"""Every optax optimizer by name: ``optax_<name>`` for each alias of ``optax`` and ``optax.contrib``.

The classes are made at import time from the installed optax, so a new optax release adds its
optimizers here without a code change. A function counts as an optimizer when it is a public
callable of ``optax`` or ``optax.contrib`` (not a ``scale_by_*`` building block) that takes a
``learning_rate`` (or lives in optax's alias module) and returns a gradient transformation.

**Parameters** are optax's own, with optax's names and defaults, read from the function's
signature. A parameter's type comes from its default when that says it (a float, int, bool,
string or tuple of numbers; a parameter named ``*dtype*`` is a dtype) and otherwise, for the
parameters optax defaults to ``None``, from an explicit table (:data:`_AMBIGUOUS`). Values that a
YAML file cannot express (callables, transformations, pytrees of dimension numbers) are not
exposed and keep optax's default; dtypes are written as names (``mu_dtype: bfloat16``). Passing
anything else raises ``ConfigError`` listing the valid parameters.

**The shared fields and optax's parameters** (the rule for names both have):

- ``learning_rate`` is ours: the peak of the shared schedule (default: optax's default when it
  has one, e.g. 1.0 for prodigy, else 6e-4). optax receives the schedule's value at every step,
  so its own step-size logic (prodigy's estimate, schedule-free's weighting) sees the schedule.
  Where optax only reads the learning rate when the state is created (``rprop``: the initial
  step size; found automatically by building the state with two learning rates), optax gets the
  peak and the schedule multiplies the update by ``lr_t / peak``. Other learning rates of the
  same function (``muon``'s ``adam_learning_rate``) follow the same schedule shape.
  Learning-rate-free methods that produce NaN at learning rate 0 (the first warmup step;
  D-Adaptation does, found by a probe at the first build) get the schedule floored at
  ``1e-6 * peak``. ``polyak_sgd`` has no ``learning_rate``: the schedule drives its ``scaling``.
- ``weight_decay`` is ours (so ``weight_decay_end``/``weight_decay_schedule`` apply) and is passed
  to optax's own decay parameter (``weight_decay``, or adafactor's ``weight_decay_rate``), with
  optax's semantics and optax's default. Our decay mask goes to optax's ``mask`` /
  ``weight_decay_mask``. A function that decays without taking a mask raises ``ConfigError``
  when our mask would exclude something (set ``default_weight_decay_mask: false`` to accept
  decaying every parameter). A function with no decay of its own gets decoupled decay from us,
  ``-lr_t * wd * p`` after its update, default ``weight_decay: 0`` (optax's behaviour).
- Every other optax parameter named like one of our fields gets an ``optax_`` prefix
  (rmsprop's EMA rate ``decay`` is ``optax_decay``; our ``decay`` stays the LR decay length).

Our global clip, skip-step guards and group overrides wrap the optax transformation like any
other optimizer. The trainer's ``loss=`` reaches optax as ``value=`` (``polyak_sgd``, ``momo``)
and ``obj_fn=`` as is (``sophia``). Functions that cannot fit are listed in :data:`UNSUPPORTED`
with the reason; :func:`optax_config` builds a config by optax name from Python.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from marin_optim.config import OptimizerConfig
from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.registry import first_line
from marin_optim.transforms._tree import keep_state_dtypes
from marin_optim.validation import is_finite_real, where_of

logger = logging.getLogger(__name__)

GROUP = "optax (by name)"
PREFIX = "optax_"

UNSUPPORTED: dict[str, str] = {}
"""``optax`` name -> why it has no ``optax_<name>`` config (filled at import from the installed optax)."""

# Known reasons, listed when the installed optax has the function.
_KNOWN_UNSUPPORTED = {
    "lbfgs": (
        "quasi-Newton with a zoom line search: every step evaluates the objective several times on "
        "a fixed batch (update needs value, grad and value_fn) and assumes unclipped full-batch "
        "gradients; it does not fit stochastic training through the shared clip"
    ),
    "dpsgd": (
        "differentially private SGD clips per-example gradients: it needs every gradient leaf with a "
        "leading batch axis, while the trainer passes the batch-mean gradient"
    ),
    "schedule_free": (
        "wraps a base transformation object, which a config cannot name; use optax_schedule_free_adamw, "
        "optax_schedule_free_sgd, or type: schedule_free_adamw"
    ),
    "mechanize": "wraps a base transformation object, which a config cannot name",
    "sam": (
        "optax.contrib.sam alternates ascent and descent steps over pairs of updates with two "
        "transformation objects; use type: sam, which wraps any optimizer config"
    ),
    "reduce_on_plateau": "not an optimizer: it scales the updates of another one from the loss history",
}

# Functions whose schedule-driven step size is not called learning_rate.
_LR_PARAM = {"polyak_sgd": "scaling"}

ZERO_LR_FLOOR = 1e-6
"""Where optax's function breaks at learning rate 0, the schedule is floored at this times the peak."""

# optax defaults that do not survive the shared schedule: (new default, why).
_DEFAULT_OVERRIDES: dict[str, dict[str, tuple[Any, str]]] = {
    "prodigy": {
        "safeguard_warmup": (
            True,
            "the shared schedule warms up from 0, and at learning rate 0 optax's default divides 0 by 0",
        )
    },
}

# Values optax accepts that give NaN updates: function -> {parameter: (lowest value, why)}.
_LOWER_BOUNDS: dict[str, dict[str, tuple[float, str]]] = {
    "radam": {"threshold": (4.0, "the rectifier is the square root of a negative number for 2 < rho_t < 4")},
}

# Known behaviours of an optax function worth a line in its config's docstring.
_NOTES = {
    "rprop": (
        "optax.scale_by_rprop (up to at least 0.2.8) returns the previous step's update, zero at the "
        "first step (optax pull request #1725); type: rprop follows the paper and torch"
    ),
}

_DECAY_PARAMS = ("weight_decay", "weight_decay_rate")
_MASK_PARAMS = ("mask", "weight_decay_mask")

_OBJECT_REASON = "a transformation or dimension-numbers object"

# optax parameters whose signature does not say what a config should hold: their default is
# None (or they have none) and optax annotates them with wide unions (``ArrayLike | None``,
# ``Any``). Parameters with a telling default are typed automatically (see _field_type); these
# are typed here, by name, in any optax function. name -> (field type, field default) when the
# config exposes it, or the reason it does not (optax's default is then kept). A parameter like
# these that is missing here is not exposed, with the reason UNLISTED, which the tests refuse.
_AMBIGUOUS: dict[str, tuple[Any, Any] | str] = {
    "momentum": (float | None, None),  # sgd, rmsprop, adafactor: the momentum rate; None: none
    "optimism": (float | None, None),  # optimistic_adam: None means b1
    "beta3": (float | None, None),  # prodigy: the rate of D's estimate; None means sqrt(b2)
    "init_estim_sq_dist": (float | None, None),  # dowg: None estimates it at the first step
    "adam_learning_rate": (float | None, None),  # muon: None means learning_rate
    "consistent_rms": (float | None, None),  # muon (optax >= 0.2.7): None turns it off
    "warmup_steps": (int | None, None),  # schedule_free_adamw/sgd: None means no warmup
    "key": (int, 0),  # noisy_sgd's PRNG key as an int seed (None warns; optax 0.2.7 requires one)
    "seed": (int | None, None),  # noisy_sgd (optax 0.2.8): the deprecated spelling of key
    "base_optimizer": _OBJECT_REASON,  # galore: a GradientTransformation
    "weight_dimension_numbers": _OBJECT_REASON,  # galore: a pytree of dimension numbers
    "muon_weight_dimension_numbers": _OBJECT_REASON,  # muon: a pytree of dimension numbers
}

UNLISTED = "of a type its signature does not tell (optax_registry._AMBIGUOUS does not list it)"
"""Why a parameter that :data:`_AMBIGUOUS` should list is not exposed (a new optax parameter)."""


@dataclass(frozen=True)
class OptaxParam:
    """One optax parameter exposed as a config field."""

    name: str
    """optax's name."""
    field: str
    """The config field (``name``, or ``optax_<name>`` when it collides with a shared field)."""
    type: Any
    default: Any
    is_dtype: bool = False
    scaled_lr: bool = False
    """A second learning rate (``adam_learning_rate``): multiplied by the schedule's ``lr_t / peak``."""


@dataclass(frozen=True)
class OptaxSpec:
    """How one optax function maps onto a config."""

    name: str
    qualname: str
    fn: Callable[..., Any]
    lr_param: str
    lr_default: float | None
    decay_param: str | None
    decay_default: Any
    mask_param: str | None
    params: tuple[OptaxParam, ...]
    hidden: tuple[tuple[str, str], ...]
    """Parameters that keep optax's default: (name, why)."""

    def default_kwargs(self) -> dict[str, Any]:
        """optax's keyword arguments at our defaults (dtypes converted), without the learning rate."""
        return {p.name: jnp.dtype(p.default) if p.is_dtype and p.default else p.default for p in self.params}

    @functools.cached_property
    def lr_read_at_init(self) -> bool:
        """Whether the optimizer's *state* depends on the learning rate (rprop's initial step).

        Builds the state at optax's defaults with two learning rates. No exception is expected
        (the tests build every optimizer so), so one is a bug, ours or a new optax signature's,
        and surfaces at the first build instead of being taken for "no".
        """
        # Concrete values even when first asked inside a jit trace (the template builds the
        # update rule there).
        with jax.ensure_compile_time_eval():
            params = {"x": jnp.ones((3, 2), jnp.float32)}
            kwargs = self.default_kwargs()
            one = jax.tree.leaves(self.fn(**kwargs, **{self.lr_param: 1.0}).init(params))
            two = jax.tree.leaves(self.fn(**kwargs, **{self.lr_param: 2.0}).init(params))
            return any(not bool(jnp.array_equal(a, b)) for a, b in zip(one, two, strict=True))


@functools.lru_cache(maxsize=256)
def breaks_at_zero_lr(spec: OptaxSpec, kwargs: tuple[tuple[str, Any], ...]) -> bool:
    """Whether two updates at learning rate 0 (a warmup's first steps) produce non-finite values.

    Learning-rate-free methods (D-Adaptation, Prodigy without its safeguard) estimate their step
    as a ratio of sums weighted by the learning rate, which is 0/0 there. ``kwargs`` passed
    :meth:`OptaxConfig.validate` (optax built with them), so an exception here is a bug and
    surfaces, except the one that answers the question.
    """
    try:
        with jax.ensure_compile_time_eval():  # concrete even when first asked inside a jit trace
            tx = _loss_as_value(spec.fn(**dict(kwargs), **{spec.lr_param: 0.0}), spec.name)
            params = {"x": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(3, 2)}
            state = tx.init(params)
            objective = lambda p: jnp.sum(jnp.square(p["x"] - 0.5))
            for _ in range(2):
                value, grads = jax.value_and_grad(objective)(params)
                updates, state = tx.update(grads, state, params, loss=value, obj_fn=objective)
                params = optax.apply_updates(params, updates)
            leaves = jax.tree.leaves((updates, params))
            return not all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    except FloatingPointError:
        # With jax_debug_nans / jax_debug_infs on, JAX raises this where a NaN or inf appears:
        # the non-finite value this probe looks for.
        return True


def _dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return jnp.dtype(value).name
    except TypeError:  # what jnp.dtype raises for a value that is not a dtype
        return None


def _field_type(param: inspect.Parameter) -> tuple[Any, Any] | str:
    """``(type, default)`` of the config field for an optax parameter, or why it is not exposed.

    A dtype (by its name) is written as its name; a default of None (or none) takes its type from
    :data:`_AMBIGUOUS`; any other default gives the type itself (:func:`_typed_by_default`).
    """
    default = param.default
    required = default is inspect.Parameter.empty
    if "dtype" in param.name:
        if not required and default is not None and _dtype_name(default) is None:
            return f"a dtype default ({default!r}) with no name"
        return (str | None, None if required else _dtype_name(default))
    if default is None or required:
        return _AMBIGUOUS.get(param.name, UNLISTED)
    annotation = param.annotation
    if typing.get_origin(annotation) is Literal and default in typing.get_args(annotation):
        return (annotation, default)  # its choices, checked when the config is made
    return _typed_by_default(default)


def _typed_by_default(default: Any) -> tuple[Any, Any] | str:
    """``(type, default)`` of a field whose optax default says its type, or why it is not exposed."""
    if isinstance(default, tuple) and hasattr(default, "_fields"):  # a NamedTuple
        if isinstance(default, optax.GradientTransformation):
            return "a transformation object"
        return f"a {type(default).__name__} object"
    for kind in (bool, int, float, str):  # bool first: a bool is an int too
        if isinstance(default, kind):
            return (kind, default)
    if isinstance(default, tuple) and default:
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in default):
            return (tuple[float, ...], tuple(float(x) for x in default))
        if all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in default):
            kinds = tuple(str if isinstance(x, str) else float for x in default)
            return (tuple[kinds], tuple(x if isinstance(x, str) else float(x) for x in default))  # type: ignore[valid-type]
        return f"a tuple default ({default!r}) that a config cannot express"
    if callable(default):
        return "a callable"
    return f"a default of type {type(default).__name__}"


def analyse(name: str, qualname: str, fn: Callable[..., Any]) -> OptaxSpec | str:
    """The :class:`OptaxSpec` of an optax function, or the reason it cannot be a config."""
    if name in _KNOWN_UNSUPPORTED:
        return _KNOWN_UNSUPPORTED[name]
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # inspect's errors for a callable without a readable signature
        return "its signature cannot be read"
    parameters = dict(signature.parameters)
    lr_param = _LR_PARAM.get(name, "learning_rate")
    if lr_param not in parameters:
        return "it has no learning_rate parameter for the shared schedule to drive"
    shared = {f.name for f in dataclasses.fields(OptimizerConfig)}
    lr = parameters.pop(lr_param)
    lr_default = (
        lr.default if isinstance(lr.default, (int, float)) and not isinstance(lr.default, bool) else None
    )
    decay_param = next((p for p in _DECAY_PARAMS if p in parameters), None)
    decay_default = parameters.pop(decay_param).default if decay_param else None
    mask_param = next((p for p in _MASK_PARAMS if p in parameters), None)
    if mask_param:
        parameters.pop(mask_param)
    exposed, hidden = [], []
    # Names a field must not take: the config's own attributes (methods included) and fields.
    taken = set(dir(OptaxConfig)) | {lr_param, "learning_rate", "weight_decay"}
    for param in parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        field = f"{PREFIX}{param.name}" if param.name in shared else param.name
        typed = _field_type(param) if field not in taken else f"its field name {field!r} is taken"
        if isinstance(typed, str):
            if param.default is inspect.Parameter.empty:
                return f"its required parameter {param.name!r} is {typed}, which a config cannot give"
            hidden.append((param.name, typed))
            continue
        taken.add(field)
        tp, default = typed
        if param.name in _DEFAULT_OVERRIDES.get(name, {}):
            default = _DEFAULT_OVERRIDES[name][param.name][0]
        exposed.append(
            OptaxParam(
                name=param.name,
                field=field,
                type=tp,
                default=default,
                is_dtype="dtype" in param.name,
                scaled_lr=param.name.endswith("learning_rate"),
            )
        )
    return OptaxSpec(
        name=name,
        qualname=qualname,
        fn=fn,
        lr_param=lr_param,
        lr_default=float(lr_default) if lr_default is not None else None,
        decay_param=decay_param,
        decay_default=decay_default,
        mask_param=mask_param,
        params=tuple(exposed),
        hidden=tuple(hidden),
    )


def _is_transformation_factory(name: str, fn: Any) -> bool:
    if name.startswith("_") or name.startswith("scale_by_") or isinstance(fn, type) or not callable(fn):
        return False
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # inspect's errors for a callable without a readable signature
        return False
    module = getattr(getattr(fn, "func", fn), "__module__", "") or ""
    if "learning_rate" not in signature.parameters and not module.endswith(".alias"):
        return False
    return _returns_transformation(signature.return_annotation)


def _returns_transformation(annotation: Any) -> bool:
    """Whether a return annotation admits a gradient transformation (unannotated: assumed)."""
    if annotation is inspect.Signature.empty:
        return True
    if isinstance(annotation, str):  # postponed (``from __future__ import annotations``): the name
        return annotation.rsplit(".", 1)[-1] in ("GradientTransformation", "GradientTransformationExtraArgs")
    options = typing.get_args(annotation) or (annotation,)  # ``X | None`` or a class
    return any(isinstance(t, type) and issubclass(t, optax.GradientTransformation) for t in options)


def discover(
    namespaces: Iterable[tuple[str, types.ModuleType]] | None = None,
) -> tuple[dict[str, OptaxSpec], dict[str, str]]:
    """``({name: spec}, {name: reason})`` for the optimizers of ``namespaces``.

    ``namespaces`` defaults to ``[("optax", optax), ("optax.contrib", optax.contrib)]``; a name
    found in several keeps the first (a contrib optimizer that graduates to ``optax`` is taken
    from ``optax``).
    """
    if namespaces is None:
        namespaces = [("optax", optax), ("optax.contrib", optax.contrib)]
    specs: dict[str, OptaxSpec] = {}
    unsupported: dict[str, str] = {}
    for prefix, module in namespaces:
        for name in sorted(dir(module)):
            if name in specs or name in unsupported:
                continue
            fn = getattr(module, name)
            if not _is_transformation_factory(name, fn):
                if name in _KNOWN_UNSUPPORTED and callable(fn):
                    unsupported[name] = _KNOWN_UNSUPPORTED[name]
                continue
            result = analyse(name, f"{prefix}.{name}", fn)
            if isinstance(result, str):
                unsupported[name] = result
            else:
                specs[name] = result
    return specs, unsupported


# -- the config base class -------------------------------------------------------------------


def _loss_as_value(tx: Any, name: str) -> optax.GradientTransformationExtraArgs:
    """Passes the trainer's ``loss`` as optax's ``value`` and drops extra args optax can't take."""
    accepts: set[str] | None
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        params = list(inspect.signature(tx.update).parameters.values())
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            accepts = None
        else:
            accepts = {p.name for p in params[3:]}
    else:
        accepts = set()

    def update_fn(updates, state, params=None, **extra_args):
        if "value" not in extra_args and extra_args.get("loss") is not None:
            extra_args["value"] = extra_args["loss"]
        if accepts is not None:
            extra_args = {k: v for k, v in extra_args.items() if k in accepts}
        try:
            return tx.update(updates, state, params, **extra_args)
        except TypeError as e:
            # What Python raises when optax's update needs its ``value`` keyword (polyak_sgd,
            # momo) and the trainer passed no loss: said in the trainer's terms. Others re-raised.
            if "value" in str(e) and ("missing" in str(e) or "required" in str(e)):
                raise ValueError(
                    f"{PREFIX}{name} needs the loss of the current batch: the trainer must call "
                    "tx.update(grads, opt_state, params, loss=loss)"
                ) from e
            raise

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


class OptaxConfig(OptimizerConfig):
    """Base class of the generated ``optax_<name>`` configs (not registered itself)."""

    OPTAX: ClassVar[OptaxSpec]
    GROUP: ClassVar[str] = GROUP

    def optax_kwargs(self) -> dict[str, Any]:
        """The keyword arguments given to the optax function, except the learning rate and decay."""
        out: dict[str, Any] = {}
        for p in self.OPTAX.params:
            value = getattr(self, p.field)
            if p.is_dtype and value is not None:
                value = jnp.dtype(value)
            out[p.name] = value
        return out

    def validate(self) -> None:
        super().validate()
        spec = self.OPTAX
        where = f"{PREFIX}{spec.name}"
        for p in spec.params:
            value = getattr(self, p.field)
            if p.is_dtype and value is not None:
                try:
                    jnp.dtype(value)
                except TypeError:  # jnp.dtype's error for a name that is not a dtype
                    raise ConfigError(
                        f"{where}.{p.field}={value!r}: not a dtype name (e.g. 'float32', 'bfloat16')"
                    ) from None
        for p in spec.params:  # a tuple (betas, Newton-Schulz coefficients) keeps its default's length
            value = getattr(self, p.field)
            if isinstance(p.default, tuple) and isinstance(value, tuple) and len(value) != len(p.default):
                raise ConfigError(
                    f"{where_of(self, p.field)}={list(value)!r}: must hold {len(p.default)} numbers, as "
                    f"optax's default {list(p.default)!r}"
                )
        bounds = _LOWER_BOUNDS.get(spec.name, {})
        for p in spec.params:
            if p.name in bounds:
                lo, why = bounds[p.name]
                value = getattr(self, p.field)
                if not (is_finite_real(value) and value >= lo):
                    raise ConfigError(f"{where_of(self, p.field)}={value!r}: must be >= {lo:g} ({why})")
        if spec.decay_param and not spec.mask_param and self.uses_weight_decay:
            if self.build_weight_decay_mask() is not None:
                raise ConfigError(
                    f"{where}.weight_decay={self.weight_decay!r}: {spec.qualname} decays every parameter "
                    "(it takes no mask), but the weight-decay mask would exempt some; set "
                    "default_weight_decay_mask: false (and no weight_decay_modules) to accept that"
                )
        try:  # optax's own argument checks, before anything is compiled
            spec.fn(**{spec.lr_param: self.learning_rate}, **self._decay_kwargs(None), **self.optax_kwargs())
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {spec.qualname} rejects these parameters: {e}") from None

    def _probe_key(self) -> tuple[tuple[str, Any], ...]:
        kwargs = {**self.optax_kwargs(), **self._decay_kwargs(None)}
        kwargs.pop(self.OPTAX.mask_param or "", None)
        return tuple(sorted(kwargs.items()))

    def _decay_kwargs(self, hp: Mapping[str, Any] | None) -> dict[str, Any]:
        spec = self.OPTAX
        if spec.decay_param is None:
            return {}
        constant = self.weight_decay_schedule == "constant" or self.weight_decay_end is None
        if hp is None or constant:
            value: Any = self.weight_decay
            if value == 0 and spec.decay_default is None:
                value = None  # optax's own "no decay" path
        else:
            value = hp["weight_decay"]
        out = {spec.decay_param: value}
        mask = self.build_weight_decay_mask()
        if spec.mask_param and mask is not None:
            out[spec.mask_param] = mask
        return out

    def build(self, num_train_steps: int) -> optax.GradientTransformationExtraArgs:
        # Run the probes now, on the host, rather than inside the first traced update.
        if not self.OPTAX.lr_read_at_init:
            breaks_at_zero_lr(self.OPTAX, self._probe_key())
        return super().build(num_train_steps)

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        spec = self.OPTAX
        lr = hp["learning_rate"]
        ratio = lr / self.learning_rate
        kwargs = self.optax_kwargs()
        for p in spec.params:
            if p.scaled_lr and kwargs[p.name] is not None:
                kwargs[p.name] = kwargs[p.name] * ratio
        if spec.lr_read_at_init:
            kwargs[spec.lr_param] = self.learning_rate
        elif breaks_at_zero_lr(spec, self._probe_key()):
            kwargs[spec.lr_param] = jnp.maximum(lr, ZERO_LR_FLOOR * self.learning_rate)
        else:
            kwargs[spec.lr_param] = lr
        kwargs.update(self._decay_kwargs(hp))
        parts = [keep_state_dtypes(_loss_as_value(spec.fn(**kwargs), spec.name))]
        if spec.lr_read_at_init:
            parts.append(optax.scale(ratio))
        if spec.decay_param is None and self.uses_weight_decay:
            parts.append(optax.add_decayed_weights(-lr * hp["weight_decay"], self.build_weight_decay_mask()))
        return optax.chain(*parts)


# -- making the classes ----------------------------------------------------------------------


def _class_doc(spec: OptaxSpec) -> str:
    summary = first_line(spec.fn.__doc__).rstrip(".") or spec.name
    lines = [f"{spec.qualname}: {summary}.", ""]
    lines.append(
        f"Parameters as ``{spec.qualname}`` names them; the learning rate ({spec.lr_param}) comes "
        "from the shared schedule, with the shared clip, guards and groups."
    )
    if spec.decay_param:
        mask = f", masked through its ``{spec.mask_param}``" if spec.mask_param else " (it takes no mask)"
        lines.append(f"``weight_decay`` is passed to its own ``{spec.decay_param}``{mask}.")
    else:
        lines.append("``weight_decay`` (default 0) adds decoupled decay ``-lr * wd * p`` after its update.")
    renamed = [f"``{p.field}`` (optax's ``{p.name}``)" for p in spec.params if p.field != p.name]
    if renamed:
        lines.append("Renamed to avoid the shared fields: " + ", ".join(renamed) + ".")
    overrides = _DEFAULT_OVERRIDES.get(spec.name, {})
    for pname, (value, why) in overrides.items():
        lines.append(f"Default ``{pname}: {value!r}`` instead of optax's: {why}.")
    if spec.name in _NOTES:
        lines.append(f"Note: {_NOTES[spec.name]}.")
    if spec.hidden:
        lines.append(
            "Kept at optax's default: " + ", ".join(f"``{n}`` ({why})" for n, why in spec.hidden) + "."
        )
    return "\n".join(lines)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def make_config_class(spec: OptaxSpec) -> type[OptaxConfig]:
    """The frozen dataclass ``Optax<Name>Config`` for one optax function."""
    fields: list[tuple[str, Any, Any]] = []
    if spec.lr_default is not None:
        fields.append(("learning_rate", float, dataclasses.field(default=spec.lr_default)))
    if spec.decay_param is not None:
        default = spec.decay_default if isinstance(spec.decay_default, (int, float)) else 0.0
        fields.append(("weight_decay", float, dataclasses.field(default=float(default))))
    else:
        fields.append(("weight_decay", float, dataclasses.field(default=0.0)))
    for p in spec.params:
        doc = f"optax's ``{p.name}`` (default {p.default!r})"
        fields.append((p.field, p.type, dataclasses.field(default=p.default, metadata={"doc": doc})))
    cls_name = f"Optax{_camel(spec.name)}Config"
    cls = dataclasses.make_dataclass(
        cls_name,
        fields,
        bases=(OptaxConfig,),
        frozen=True,
        namespace={"OPTAX": spec, "__doc__": _class_doc(spec), "__module__": __name__},
    )
    cls.__qualname__ = cls_name
    valid = [f.name for f in dataclasses.fields(cls)]
    own = [p.field for p in spec.params]
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            key = unknown[0]
            hidden = dict(spec.hidden)
            if key in hidden:
                raise ConfigError(
                    f"{PREFIX}{spec.name}.{key}: not configurable from a config ({hidden[key]}); "
                    f"optax's default is used"
                )
            raise ConfigError(
                f"{PREFIX}{spec.name}: unknown parameter {key!r}{did_you_mean(key, valid)}; "
                f"{spec.qualname} takes {', '.join(own) or 'no other parameters'} "
                f"(plus learning_rate, weight_decay and the shared fields)"
            )
        original_init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def register_all(
    namespaces: Iterable[tuple[str, types.ModuleType]] | None = None,
) -> dict[str, type[OptaxConfig]]:
    """Registers ``optax_<name>`` for every optimizer of ``namespaces`` (see :func:`discover`).

    Returns the classes by optax name and records the others in :data:`UNSUPPORTED`. Running it
    again (a re-import) registers nothing new.
    """
    specs, unsupported = discover(namespaces)
    UNSUPPORTED.update(unsupported)
    classes = {}
    for name, spec in specs.items():
        registered = OptimizerConfig._choice_registry.get(f"{PREFIX}{name}")
        if registered is not None and getattr(registered, "OPTAX", None) is not None:
            classes[name] = registered
            continue
        # No exception expected: analyse() already kept out what cannot be a field (an unknown
        # type, a name taken by the config), so an error here is a bug and fails the import.
        cls = make_config_class(spec)
        globals()[cls.__name__] = cls
        OptimizerConfig.register_subclass(f"{PREFIX}{name}", cls)
        classes[name] = cls
    return classes


CONFIGS: dict[str, type[OptaxConfig]] = register_all()
"""optax name -> its registered config class."""


def optax_config(name: str, **params: Any) -> OptaxConfig:
    """``optax_config("adamw", b1=0.8, learning_rate=1e-3)``: the config of an optax optimizer by name."""
    key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if key not in CONFIGS:
        if key in UNSUPPORTED:
            raise ConfigError(f"optax.{key} is not supported: {UNSUPPORTED[key]}")
        raise ConfigError(f"optax has no optimizer {key!r}{did_you_mean(key, list(CONFIGS))}")
    return CONFIGS[key](**params)
