"""Newton–Schulz orthogonalisation: an approximate polar factor from matrix products only.

For ``G = U S V^T`` the polar factor is ``U V^T``. Each Newton–Schulz step applies the odd
polynomial ``p(x) = a x + b x^3 + c x^5`` to every singular value at once::

    X_0 = G / (s ||G||_F + eps)                       (all singular values now in [0, 1])
    A = X X^T;  X <- a X + (b A + c A A) X            (k = 1 .. steps; (a, b, c) may change with k)

computed on the wide orientation (``X`` is transposed when it has more rows than columns, so
``A`` is the smaller Gram matrix) and batched over leading axes with ``jax.vmap``.

Coefficient presets (``coefficient_type``), the four tables Levanter takes from NVIDIA's
Emerging-Optimizers (``emerging_optimizers/orthogonalized_optimizers/muon_utils.py``), each after
the same Frobenius normalisation:

- ``simple``: ``(3.4445, -4.7750, 2.0315)`` at every step (Jordan et al., 2024, Muon,
  https://kellerjordan.github.io/posts/muon/): fast but not convergent; singular values end up
  spread over roughly [0.7, 1.2].
- ``quintic``: a 5-row table tuned for 5 steps (Cesista, 2025,
  https://leloykun.github.io/ponder/muon-opt-coeffs/; modded-nanogpt's and Dion's Muon); step
  ``k`` uses row ``k mod 5``, as in Levanter and Emerging-Optimizers.
- ``polar_express``: the per-step optimal degree-5 polynomials of Amsel et al., 2025, "The Polar
  Express" (https://arxiv.org/abs/2505.16932, Algorithm 1), deflated by the paper's safety
  factor (1.01) and rounded to 4 decimals; steps past the 8 rows repeat the last one, the
  paper's rule (it converges to ``U V^T``).
- ``aol``: the 4-step table of Turbo-Muon (Boissin et al., 2025,
  https://arxiv.org/abs/2512.04632), which the paper applies after its AOL column rescaling;
  here, as in Levanter, after the Frobenius normalisation. Steps past the 4 rows repeat the last.

Levanter cycles every table (row ``k mod rows``); for ``polar_express`` past 8 steps and ``aol``
past 4 this is not what the tables are for: the first row, applied again to singular values
near 1, sends them to 1.76 (``polar_express``) or -0.59 (``aol``: the 5-step result is the
*negated* polar factor, about -0.58 U V^T). Both tables here repeat their last row instead; up
to 8 and 4 steps they are Levanter's.

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

from marin_optim.labels import MatrixAxes, ParamLabeler, raw_array, restore_layout
from marin_optim.transforms.distributed import spread_matrices

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


NS_PRESETS: dict[str, NewtonSchulzCoefficients] = {
    "simple": NewtonSchulzCoefficients("simple", ((3.4445, -4.7750, 2.0315),)),
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
        "polar_express",
        (
            (8.2051, -22.9019, 16.4607),
            (4.0664, -2.8612, 0.5184),
            (3.9096, -2.8234, 0.5250),
            (3.2856, -2.4153, 0.4853),
            (2.2779, -1.6198, 0.3985),
            (1.8726, -1.2307, 0.3585),
            (1.8564, -1.2132, 0.3568),
            (1.8750, -1.2500, 0.3750),
        ),
        after_table="repeat_last",
    ),
    "aol": NewtonSchulzCoefficients(
        "aol",
        (
            (4.0098, -7.0585, 2.4635),
            (3.4585, -5.5479, 2.5959),
            (2.7573, -3.2939, 1.4254),
            (2.7215, -3.0494, 1.3169),
        ),
        after_table="repeat_last",
    ),
}
"""The coefficient presets by name (``coefficient_type``; see the module docstring)."""

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
    coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "simple",
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
            poly = b * gram + mm(c * gram, gram)
            xk = a * xk + mm(poly, xk)
        if tall:
            xk = xk.T
        return xk.astype(x.dtype)

    batch = x.shape[:-2]
    flat = x.reshape((-1, *x.shape[-2:]))
    return jax.vmap(one)(flat).reshape((*batch, *x.shape[-2:]))


def newton_schulz_step_flops(shape: Sequence[int]) -> float:
    """The matrix-product FLOPs of one Newton–Schulz step on an ``m x n`` matrix (``m <= n`` after
    orientation): ``X X^T`` and ``A X`` take ``2 m^2 n`` each, ``A A`` ``2 m^3``. The cost by which
    :func:`~marin_optim.transforms.distributed.padded_stacks` shares matrices out."""
    m, n = sorted(shape[-2:])
    return 4.0 * m * m * n + 2.0 * m**3


def orthogonalize_by_newton_schulz(
    axes: Callable[[PyTree], PyTree] | None = None,
    *,
    coefficients: str | NewtonSchulzCoefficients | Sequence[Sequence[float]] = "simple",
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
        ns = lambda m: newton_schulz(m, coefficients=coefficients, steps=steps, eps=eps, dtype=dtype)
        one = lambda view, o, u: restore_layout(o, view, like=u)
        return map_orthogonalized(
            one, ns, axes_fn(updates), updates, who="orthogonalize_by_newton_schulz", padded=True
        ), state

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


def map_orthogonalized(
    one: Callable[..., Any],
    ns: Callable[[Any], Any],
    axes_tree: PyTree,
    first: PyTree,
    *rest: PyTree,
    who: str,
    dtype: Any = None,
    item: Callable[..., Any] | None = None,
    transposable: bool = True,
    padded: bool = False,
) -> PyTree:
    """``map_with_axes(lambda view, x, *r: one(view, ns(X), x, *r), axes_tree, first, *rest)``
    with ``X`` the leaf ``x`` of ``first`` as ``(num_matrices, fan_out, fan_in)`` (cast to
    ``dtype`` if given), and every ``ns`` call of the tree made at once, divided over the devices
    of the mesh in context (:func:`~marin_optim.transforms.distributed.spread_matrices`). Every
    leaf must have a matrix view (``who`` names the caller in the error).

    ``item(view, x, *r)``, if given, makes ``X`` instead: a batch, or a tuple of batches sharing
    the first axis (a matrix with its optimizer's factors, as Dion's step takes); ``transposable``
    says ``ns`` commutes with transposing each matrix (true of Newton–Schulz; pass ``False``
    when ``ns`` takes tuples or is not). ``padded``: ``ns`` is :func:`newton_schulz`, which commutes
    with zero padding, so matrices of several shapes may be padded to one and shared out together
    (``spread_matrices``' ``padded_cost``, with :func:`newton_schulz_step_flops`)."""
    batches: list[Any] = []

    def as_matrices(view: MatrixAxes, x: Any, *_: Any) -> jax.Array:
        matrices = view.to_matrices(raw_array(x))
        return matrices if dtype is None else matrices.astype(dtype)

    make = item or as_matrices
    map_with_axes(
        lambda view, *xs: batches.append(make(require_matrix(view, who), *xs)), axes_tree, first, *rest
    )
    cost = newton_schulz_step_flops if padded else None
    results = iter(spread_matrices(ns, batches, transposable=transposable, padded_cost=cost))
    return map_with_axes(lambda view, x, *r: one(view, next(results), x, *r), axes_tree, first, *rest)


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
