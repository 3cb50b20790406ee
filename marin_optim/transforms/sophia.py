"""Sophia-H: clipped momentum preconditioned by an EMA of a Hutchinson Hessian-diagonal estimate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

Probe = Literal["gaussian", "rademacher"]
PROBES: tuple[str, ...] = ("gaussian", "rademacher")

MISSING_OBJ_FN = (
    "sophia estimates the Hessian diagonal from the training objective: call "
    "tx.update(grads, opt_state, params, obj_fn=obj_fn) with obj_fn(params) -> scalar loss on the "
    "current batch (differentiable twice with jax)"
)


class SophiaState(NamedTuple):
    """Sophia's state; ``key`` is the rest of the probes' PRNG stream (a raw ``uint32[2]`` key)."""

    count: jax.Array
    """Steps taken (int32)."""
    hessian_count: jax.Array
    """Hessian estimates taken so far (int32)."""
    mu: optax.Updates
    """EMA of the gradients (first moment)."""
    h: optax.Updates
    """EMA of the Hessian-diagonal estimates."""
    key: jax.Array
    """Key of the next estimate's probes: each estimate splits it and keeps one half here."""
    unclipped_fraction: jax.Array
    """Fraction of the last step's coordinates with ``|m / max(gamma h, eps)| < clip_threshold``."""

    def log_values(self) -> dict[str, jax.Array]:
        return {"unclipped_fraction": self.unclipped_fraction, "hessian_updates": self.hessian_count}


def hutchinson_probes(key: jax.Array, params: Any, probe: Probe = "gaussian") -> Any:
    """Random probe vectors ``u`` shaped like ``params`` (one subkey per leaf, in leaf order).

    ``gaussian``: ``u ~ N(0, I)`` (the paper's Algorithm 1); ``rademacher``: ``u`` uniform in
    ``{-1, +1}`` (optax's choice; the lower-variance one: for a diagonal Hessian each draw is exact).
    Drawn in float32 and cast to each leaf's dtype (a forward-mode tangent must match its primal).
    """
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r}: must be one of {', '.join(PROBES)}")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draw = jax.random.normal if probe == "gaussian" else jax.random.rademacher

    def one(k: jax.Array, p: jax.Array) -> jax.Array:
        return draw(k, jnp.shape(p), dtype=jnp.float32).astype(jnp.result_type(p))

    return jax.tree.unflatten(treedef, [one(k, p) for k, p in zip(keys, leaves, strict=True)])


def hutchinson_diagonal(obj_fn: Callable[[Any], jax.Array], params: Any, probes: Any) -> Any:
    """Hutchinson's estimate of ``diag(H)``, ``H`` the Hessian of ``obj_fn`` at ``params``::

        h_hat = u * (H u)        (elementwise; E[h_hat] = diag(H) when E[u u^T] = I)

    ``H u`` is one forward-over-reverse Hessian-vector product (the cost of about two gradients).
    """
    hvp = jax.jvp(jax.grad(obj_fn), (params,), (probes,))[1]
    return jax.tree.map(lambda hu, u: (hu * u).astype(jnp.result_type(u)), hvp, probes)


def scale_by_sophia(
    b1: float = 0.96,
    b2: float = 0.99,
    eps: float = 1e-12,
    gamma: float = 0.01,
    clip_threshold: float | None = 1.0,
    update_interval: int = 10,
    seed: int = 0,
    probe: Probe = "gaussian",
) -> optax.GradientTransformationExtraArgs:
    """Sophia-H's update direction (chain decay and ``-lr`` after it).

    Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", https://arxiv.org/abs/2305.14342 (Algorithms 1 and 3). At step ``t`` (1-based)::

        m     = b1 m + (1 - b1) g
        u     = clip(m / (1 - b1^t) / max(gamma h, eps), -clip_threshold, clip_threshold)
        if t % update_interval == 0:                      (after u is formed; lax.cond)
            h = b2 h + (1 - b2) h_hat(params)            (h_hat: Hutchinson, hutchinson_diagonal)

    so ``h`` starts at zero and the first ``update_interval`` steps are clipped sign-momentum
    steps; each estimate is at the step's (pre-update) parameters and serves the next
    ``update_interval`` steps. This is the order of the authors' code and of Levanter's
    ``sophia-h`` (the paper's Algorithm 3 estimates at ``t % k == 1`` before forming ``u``). The
    first moment is bias-corrected (as in Levanter and optax; the paper is not); ``h`` is not.
    ``clip_threshold=None`` does not clip.

    Steps that estimate call ``obj_fn`` (``params -> scalar loss`` on the current batch, passed
    to ``update``) for one Hessian-vector product; the others cost nothing extra. The probes'
    key lives in the state, seeded by ``seed``: each estimate splits it, draws from one half and
    keeps the other, so runs are reproducible and a resumed run continues the same stream.

    Differs from ``optax.contrib.scale_by_sophia``: Gaussian probes by default (``probe``), the
    key in this state rather than in a separate estimator, the estimate taken after the step's
    update is formed at ``t % k == 0`` (optax: at ``t % k == 1``, also after), and the fraction
    of unclipped coordinates logged (``unclipped_fraction``; the authors suggest 0.1-0.5).
    """
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r}: must be one of {', '.join(PROBES)}")

    def init_fn(params: optax.Params) -> SophiaState:
        return SophiaState(
            count=jnp.zeros([], jnp.int32),
            hessian_count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            h=jax.tree.map(jnp.zeros_like, params),
            key=jax.random.PRNGKey(seed),
            unclipped_fraction=jnp.ones([], jnp.float32),
        )

    def update_fn(updates, state: SophiaState, params=None, **extra_args):
        obj_fn = extra_args.get("obj_fn")
        if obj_fn is None:
            raise ValueError(MISSING_OBJ_FN)
        if params is None:
            raise ValueError("sophia needs params: call tx.update(grads, opt_state, params, obj_fn=obj_fn)")
        count = state.count + 1
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g.astype(m.dtype), updates, state.mu)
        correction = 1 - jnp.asarray(b1, jnp.float32) ** count.astype(jnp.float32)

        def ratio(m: jax.Array, h: jax.Array) -> jax.Array:
            return (m / correction.astype(m.dtype)) / jnp.maximum(gamma * h, eps)

        new = jax.tree.map(ratio, mu, state.h)
        if clip_threshold is None:
            unclipped = jnp.ones([], jnp.float32)
        else:
            leaves = jax.tree.leaves(new)
            size = sum(x.size for x in leaves)
            inside = sum(jnp.sum(jnp.abs(x) < clip_threshold, dtype=jnp.float32) for x in leaves)
            unclipped = inside / max(size, 1)
            new = jax.tree.map(lambda x: jnp.clip(x, -clip_threshold, clip_threshold), new)
        new = jax.tree.map(lambda x, g: x.astype(g.dtype), new, updates)

        def estimate(operand):
            h, key, n = operand
            key, draw = jax.random.split(key)
            h_hat = hutchinson_diagonal(obj_fn, params, hutchinson_probes(draw, params, probe))
            h = jax.tree.map(lambda old, e: b2 * old + (1 - b2) * e.astype(old.dtype), h, h_hat)
            return h, key, n + 1

        h, key, hessian_count = jax.lax.cond(
            count % update_interval == 0,
            estimate,
            lambda operand: operand,
            (state.h, state.key, state.hessian_count),
        )
        return new, SophiaState(count, hessian_count, mu, h, key, unclipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
