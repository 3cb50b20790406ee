"""Newton–Schulz orthogonalisation: an approximate polar factor from matrix products only.

For ``G = U S V^T`` the polar factor is ``U V^T``. Each Newton–Schulz step applies the odd
polynomial ``p(x) = a x + b x^3 + c x^5`` to every singular value at once::

    X_0 = G / (s ||G||_F + eps)                       (all singular values now in [0, 1])
    A = X X^T;  X <- a X + (b A + c A A) X            (k = 1 .. steps; (a, b, c) may change with k)

computed on the wide orientation (``X`` is transposed when it has more rows than columns, so
``A`` is the smaller Gram matrix) and batched over leading axes with ``jax.vmap``.

Coefficient presets:

- ``standard``: ``(3.4445, -4.7750, 2.0315)`` at every step (Jordan et al., 2024, Muon,
  https://kellerjordan.github.io/posts/muon/): fast but not convergent; singular values end up
  spread over roughly [0.7, 1.2].
- ``quintic``: the 5-row table used by Dion's Muon (Ahn et al., 2025,
  https://arxiv.org/abs/2504.05295); step ``k`` uses row ``k mod 5``.
- ``polar_express``: the per-step optimal degree-5 polynomials of Amsel et al., 2025, "The Polar
  Express" (https://arxiv.org/abs/2505.16932, Algorithm 1): eight published rows, each but the
  last divided by the safety factors ``(1.01, 1.01^3, 1.01^5)``, the input normalised by
  ``1.01 ||G||_F``; steps past the table repeat its last row. It converges to ``U V^T``.

optax.contrib has ``orthogonalize_via_newton_schulz`` only from optax 0.2.5 on, with an interface
that changed in 0.2.6 and 0.2.8 (and no compute-dtype option), while marin-levanter allows optax
0.2.4; the ~20 lines below are therefore our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from marin_optim.labels import MatrixAxes, ParamLabeler, map_matrices

PyTree = Any
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class NewtonSchulzCoefficients:
    """A coefficient table and how steps beyond it are chosen.

    ``after_table``: ``"cycle"`` uses row ``k mod len(table)``, ``"repeat_last"`` stays on the
    last row. ``norm_scale`` multiplies the Frobenius norm the input is divided by (a safety
    margin keeping the top singular value below 1 in low precision).
    """

    name: str
    table: tuple[Triple, ...]
    after_table: Literal["cycle", "repeat_last"] = "cycle"
    norm_scale: float = 1.0

    def for_steps(self, steps: int) -> tuple[Triple, ...]:
        """The ``(a, b, c)`` used at each of ``steps`` iterations."""
        n = len(self.table)
        if self.after_table == "cycle":
            return tuple(self.table[k % n] for k in range(steps))
        return tuple(self.table[min(k, n - 1)] for k in range(steps))


def _polar_express_table() -> tuple[Triple, ...]:
    # Amsel et al. 2025, Algorithm 1 (degree 5, l = 1e-3): the published per-step optimal
    # polynomials; all but the last are deflated by the safety factor 1.01 (Section 4.4).
    raw = (
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
        (1.875, -1.25, 0.375),
    )
    safety = 1.01
    scaled = tuple((a / safety, b / safety**3, c / safety**5) for a, b, c in raw[:-1])
    return (*scaled, raw[-1])


NS_PRESETS: dict[str, NewtonSchulzCoefficients] = {
    "standard": NewtonSchulzCoefficients("standard", ((3.4445, -4.7750, 2.0315),)),
    "quintic": NewtonSchulzCoefficients(
        "quintic",
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
    ),
    "polar_express": NewtonSchulzCoefficients(
        "polar_express", _polar_express_table(), after_table="repeat_last", norm_scale=1.01
    ),
}
"""The coefficient presets by name (see the module docstring)."""

NS_DTYPES: dict[str, Any] = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def resolve_coefficients(
    coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]],
) -> NewtonSchulzCoefficients:
    """A preset name, a :class:`NewtonSchulzCoefficients`, or a raw table of ``(a, b, c)`` rows."""
    if isinstance(coefficients, NewtonSchulzCoefficients):
        return coefficients
    if isinstance(coefficients, str):
        try:
            return NS_PRESETS[coefficients]
        except KeyError:
            raise ValueError(
                f"unknown Newton-Schulz preset {coefficients!r}; choose one of {sorted(NS_PRESETS)}"
            ) from None
    rows = tuple(tuple(float(v) for v in row) for row in coefficients)
    if not rows or any(len(r) != 3 for r in rows):
        raise ValueError(f"a coefficient table needs rows of 3 numbers (a, b, c), got {coefficients!r}")
    return NewtonSchulzCoefficients("custom", rows)  # type: ignore[arg-type]


def _resolve_dtype(dtype: Any) -> Any:
    return NS_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype


def newton_schulz(
    x: jax.Array,
    *,
    coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "standard",
    steps: int = 5,
    eps: float = 1e-8,
    dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """Approximate polar factor of every matrix in ``x[..., m, n]`` (leading axes are vmapped).

    Matrix products take their operands in ``dtype`` (bfloat16 by default, as in Muon;
    ``jnp.float32`` for accuracy) and accumulate in float32; the norm and the polynomial's
    sums stay in float32, so bfloat16 rounds each product once. The result has ``x``'s dtype.
    """
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (or a batch of them), got shape {x.shape}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    coeffs = resolve_coefficients(coefficients)
    schedule = coeffs.for_steps(steps)
    compute = _resolve_dtype(dtype)

    def mm(u: jax.Array, v: jax.Array) -> jax.Array:
        # Operands in the compute dtype, products accumulated and returned in float32.
        return jnp.matmul(u.astype(compute), v.astype(compute), preferred_element_type=jnp.float32)

    def one(g: jax.Array) -> jax.Array:
        xk = g.astype(jnp.float32)
        tall = g.shape[0] > g.shape[1]
        if tall:
            xk = xk.T
        xk = xk / (coeffs.norm_scale * jnp.sqrt(jnp.sum(jnp.square(xk))) + eps)
        for a, b, c in schedule:
            gram = mm(xk, xk.T)
            poly = b * gram + c * mm(gram, gram)
            xk = a * xk + mm(poly, xk)
        if tall:
            xk = xk.T
        return xk.astype(x.dtype)

    batch = x.shape[:-2]
    flat = x.reshape((-1, *x.shape[-2:]))
    return jax.vmap(one)(flat).reshape((*batch, *x.shape[-2:]))


def orthogonalize_by_newton_schulz(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "standard",
    steps: int = 5,
    eps: float = 1e-8,
    dtype: Any = jnp.bfloat16,
) -> optax.GradientTransformation:
    """Replaces every matrix update by its Newton–Schulz orthogonalisation (stateless).

    Update rule, per matrix ``G`` of a leaf viewed as ``(batch, fan_out, fan_in)``:
    ``G <- NS(G)`` (see :func:`newton_schulz`). ``axes(updates)`` gives each leaf's
    :class:`~marin_optim.labels.MatrixAxes`; the default labels haliax / equinox / dict trees with
    :class:`~marin_optim.labels.ParamLabeler`. A leaf without a matrix view is an error: route
    vectors and embeddings to another transform with ``optax.multi_transform``.
    """
    resolve_coefficients(coefficients)
    axes_fn = axes or ParamLabeler().matrix_axes

    def update_fn(updates, state, params=None):
        del params

        def one(view: MatrixAxes | None, u: Any) -> Any:
            view = require_matrix(view, "orthogonalize_by_newton_schulz")
            return map_matrices(
                lambda m: newton_schulz(m, coefficients=coefficients, steps=steps, eps=eps, dtype=dtype),
                u,
                view,
            )

        return map_with_axes(one, axes_fn(updates), updates), state

    return optax.GradientTransformation(_empty_state, update_fn)


def map_with_axes(fn: Callable[..., Any], axes_tree: PyTree, *trees: PyTree) -> PyTree:
    """``jax.tree.map`` over parameter leaves (haliax arrays whole), the axes tree leading.

    Positions where the first of ``trees`` holds ``None`` (an absent parameter) or an
    ``optax.MaskedNode`` (a leaf another ``multi_transform`` branch owns) are passed through.
    """

    def skip_empty(view: Any, first: Any, *rest: Any) -> Any:
        if first is None or isinstance(first, optax.MaskedNode):
            return first
        return fn(view, first, *rest)

    return jax.tree.map(
        skip_empty,
        axes_tree,
        *trees,
        is_leaf=lambda x: x is None or isinstance(x, (MatrixAxes, optax.MaskedNode)),
    )


def require_matrix(view: MatrixAxes | None, who: str) -> MatrixAxes:
    if view is None:
        raise ValueError(
            f"{who} got a leaf without a matrix view (a vector, an embedding or an unlabelled head); "
            "route such leaves to another transform with optax.multi_transform, or label them"
        )
    return view


def _empty_state(params: Any) -> optax.EmptyState:
    # optax.init_empty_state only exists from optax 0.2.6 on.
    del params
    return optax.EmptyState()
