"""Which parameters are hidden matrices, embeddings, the output head, or vectors.

Matrix-aware optimizers (Muon, NorMuon, Dion, Scion) orthogonalise the updates of hidden weight
matrices and hand everything else to an element-wise optimizer. Telling the two apart needs more
than ``ndim == 2``: an embedding table and the LM head are 2-D but must not be orthogonalised
(Dion's and Muon's authors both warn about this), a haliax ``Linear`` may have several input and
output axes, and scan-stacked layers carry a leading layer axis that is a *batch* of matrices,
not part of one. This module resolves, for every leaf of an equinox / haliax / dict parameter
tree, a :class:`ParamLabel`: its kind and, for matrices, a :class:`MatrixAxes` view saying which
array axes are the fan-in (reduced over by the layer), which are the fan-out, and which are
batch axes.

Rules, first match wins:

1. a user override, ``{fnmatch pattern: spec}`` matched against the dotted path
   (``blocks.attn.q_proj.weight``) or the class path
   (``Transformer.blocks.Stacked.stacked.Block.attn.Attention.q_proj.Linear.weight``);
   ``spec`` is a kind (``"vector"``) or a kind with axes (``"matrix(in=0, out=1)"``; axes are
   positions or, for haliax arrays, axis names: ``"matrix(in=embed, out=(heads, head_dim))"``).
   A pattern that matches nothing, or a leaf matched by two patterns, is an error;
2. the weight of a haliax ``Linear``/``MoELinear`` (``In``/``Out`` axes, any others are batch)
   or an equinox ``Linear`` (``(out, in)``, leading axes batch) or ``Conv`` (``(out, in,
   *kernel)``): ``head`` if a module on its path is named like an output head (``lm_head``,
   ``unembed``, ``unembedding``, ``head``), else ``matrix``; their biases are ``vector``;
3. the weight of a haliax or equinox ``Embedding``: ``embedding``;
4. anything in a normalisation module, and any leaf with fewer than two non-batch axes
   (biases, gains, scalars; a haliax ``Stacked`` layer axis or an ``ArrayStacked`` leading axis
   counts as batch): ``vector``;
5. other arrays with two or more axes: ``head`` or ``embedding`` when a path component is named
   like one (``lm_head``, ...; ``wte``, ``wpe``, ``*embed*`` but not ``*unembed*``), else
   ``matrix`` in the ``x @ W`` layout (``in = -2``, ``out = -1``, leading axes batch: optax's
   and flax's kernel convention).

The resolved assignment can be printed (:meth:`ParamLabeler.describe`), and should be: a wrong
guess costs a silent loss in quality, never an error.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import haliax
import haliax.nn as hnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from marin_optim.errors import ConfigError, did_you_mean
from marin_optim.params import _child, _key_name

PyTree = Any
Kind = Literal["matrix", "embedding", "head", "vector"]
KINDS: tuple[str, ...] = ("matrix", "embedding", "head", "vector")

DEFAULT_HEAD_NAMES: tuple[str, ...] = ("lm_head", "unembed", "unembedding", "head")
"""Path components that name an output head (compared exactly)."""
DEFAULT_EMBEDDING_NAMES: tuple[str, ...] = ("wte", "wpe", "*embed*")
"""Path components (fnmatch patterns) that name an embedding table; ``*unembed*`` never does."""

_NORM_CLASSES: tuple[type, ...] = (
    hnn.LayerNorm,
    hnn.RmsNorm,
    eqx.nn.LayerNorm,
    eqx.nn.RMSNorm,
    eqx.nn.GroupNorm,
    eqx.nn.BatchNorm,
)


# -- matrix views ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixAxes:
    """A leaf viewed as a batch of ``(fan_out, fan_in)`` matrices.

    ``fan_in`` are the axes a layer contracts its input with, ``fan_out`` the axes it produces;
    every other axis of ``shape`` is a batch axis (scan-stacked layers, experts). Several fan-in
    (or fan-out) axes are flattened into one matrix dimension, in the order given.
    """

    shape: tuple[int, ...]
    fan_in: tuple[int, ...]
    fan_out: tuple[int, ...]

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        axes = self.fan_in + self.fan_out
        if not self.fan_in or not self.fan_out:
            raise ValueError(f"MatrixAxes needs at least one fan-in and one fan-out axis, got {self}")
        if any(not 0 <= a < ndim for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(
                f"MatrixAxes fan_in={self.fan_in} fan_out={self.fan_out}: axes must be distinct "
                f"positions in [0, {ndim}) for shape {self.shape}"
            )

    @staticmethod
    def of(shape: Sequence[int], fan_in: Sequence[int] | int, fan_out: Sequence[int] | int) -> MatrixAxes:
        """Builds a view, accepting negative positions and single ints."""
        ndim = len(shape)

        def norm(a: Sequence[int] | int) -> tuple[int, ...]:
            a = (a,) if isinstance(a, int) else tuple(a)
            return tuple(int(i) + ndim if int(i) < 0 else int(i) for i in a)

        return MatrixAxes(tuple(int(s) for s in shape), norm(fan_in), norm(fan_out))

    @property
    def batch(self) -> tuple[int, ...]:
        """Axes that are neither fan-in nor fan-out, in array order."""
        used = set(self.fan_in) | set(self.fan_out)
        return tuple(i for i in range(len(self.shape)) if i not in used)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.batch)

    @property
    def fan_in_size(self) -> int:
        return math.prod(self.shape[a] for a in self.fan_in)

    @property
    def fan_out_size(self) -> int:
        return math.prod(self.shape[a] for a in self.fan_out)

    @property
    def fan_out_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.fan_out)

    @property
    def num_matrices(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def _perm(self) -> tuple[int, ...]:
        return self.batch + self.fan_out + self.fan_in

    def to_matrices(self, x: jax.Array) -> jax.Array:
        """``x`` (of ``shape``) as ``(num_matrices, fan_out, fan_in)``."""
        if tuple(x.shape) != self.shape:
            raise ValueError(f"array of shape {x.shape} does not match the view's shape {self.shape}")
        y = jnp.transpose(x, self._perm)
        return y.reshape(self.num_matrices, self.fan_out_size, self.fan_in_size)

    def from_matrices(self, y: jax.Array) -> jax.Array:
        """Inverse of :meth:`to_matrices`."""
        full = self.batch_shape + self.fan_out_shape + tuple(self.shape[a] for a in self.fan_in)
        inverse = tuple(int(i) for i in np.argsort(self._perm))
        return jnp.transpose(y.reshape(full), inverse)

    def __str__(self) -> str:
        core = f"out {self.fan_out_size} <- in {self.fan_in_size}"
        return f"{self.num_matrices} x [{core}]" if self.batch else f"[{core}]"


def restore_layout(y: jax.Array, axes: MatrixAxes, like: Any) -> Any:
    """``(num_matrices, fan_out, fan_in)`` back to the leaf's layout (a ``NamedArray`` if ``like`` is)."""
    out = axes.from_matrices(y)
    return haliax.named(out, like.axes) if haliax.is_named_array(like) else out


def raw_array(x: Any) -> jax.Array:
    """The array behind a leaf (a haliax ``NamedArray``'s ``.array``, else the leaf itself)."""
    return x.array if haliax.is_named_array(x) else x


# -- labels ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamLabel:
    """What one parameter leaf is, and why (``reason`` names the rule or the override)."""

    path: str
    kind: Kind
    shape: tuple[int, ...]
    axes: MatrixAxes | None
    reason: str

    @property
    def is_matrix(self) -> bool:
        return self.kind == "matrix"


@dataclass(frozen=True)
class LabelSpec:
    """A parsed override value: a kind, and optionally its fan-in / fan-out axes."""

    kind: Kind
    fan_in: tuple[int | str, ...] | None = None
    fan_out: tuple[int | str, ...] | None = None

    @staticmethod
    def parse(text: str | LabelSpec, *, where: str = "param_labels") -> LabelSpec:
        """Parses ``"vector"`` or ``"matrix(in=0, out=1)"`` / ``"head(in=(0, 1), out=embed)"``."""
        if isinstance(text, LabelSpec):
            return text
        if not isinstance(text, str):
            raise ConfigError(
                f"{where}={text!r}: expected a string such as 'matrix' or 'matrix(in=0, out=1)'"
            )
        m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", text)
        kind = m.group(1) if m else text
        if m is None or kind not in KINDS:
            raise ConfigError(
                f"{where}={text!r}: the kind must be one of {', '.join(KINDS)}"
                f"{did_you_mean(kind, KINDS) if isinstance(kind, str) else ''}, optionally with axes "
                "as in 'matrix(in=0, out=1)'"
            )
        args = m.group(2)
        if args is None or not args.strip():
            return LabelSpec(kind)  # type: ignore[arg-type]
        if kind in ("vector", "embedding"):
            raise ConfigError(f"{where}={text!r}: only 'matrix' and 'head' take axes")
        found: dict[str, tuple[int | str, ...]] = {}
        for key, value in re.findall(r"(\w+)\s*=\s*(\([^)]*\)|[^,()]+)", args):
            if key not in ("in", "out"):
                raise ConfigError(f"{where}={text!r}: axes are given as in=... and out=..., not {key}=")
            items = [s.strip() for s in value.strip().strip("()").split(",") if s.strip()]
            if not items:
                raise ConfigError(f"{where}={text!r}: {key}= names no axis")
            found[key] = tuple(int(s) if re.fullmatch(r"-?\d+", s) else s for s in items)
        if set(found) != {"in", "out"}:
            raise ConfigError(f"{where}={text!r}: give both in=... and out=... (e.g. 'matrix(in=0, out=1)')")
        return LabelSpec(kind, found["in"], found["out"])  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.fan_in is None or self.fan_out is None:
            return self.kind

        def fmt(a: tuple[int | str, ...]) -> str:
            return str(a[0]) if len(a) == 1 else "(" + ", ".join(map(str, a)) + ")"

        return f"{self.kind}(in={fmt(self.fan_in)}, out={fmt(self.fan_out)})"


def _is_leaf(x: Any) -> bool:
    return haliax.is_named_array(x) or x is None or isinstance(x, optax.MaskedNode)


@dataclass
class _Leaf:
    """Everything the rules look at for one leaf."""

    path: str
    class_path: str
    components: tuple[str, ...]
    leaf: Any
    ancestors: list[tuple[Any, str]]  # (module, attribute under which the next node sits)
    shape: tuple[int, ...] = field(init=False)
    names: tuple[str, ...] | None = field(init=False)

    def __post_init__(self) -> None:
        if haliax.is_named_array(self.leaf):
            self.shape = tuple(self.leaf.array.shape)
            self.names = tuple(self.leaf.axis_names)
        else:
            self.shape = tuple(np.shape(self.leaf))
            self.names = None

    def positions(self, spec: Any) -> tuple[int, ...]:
        """Positions of haliax axis names (or pass-through ints) in this leaf."""
        out = []
        for a in spec if isinstance(spec, (tuple, list)) else (spec,):
            if isinstance(a, int):
                out.append(a + len(self.shape) if a < 0 else a)
            else:
                name = a if isinstance(a, str) else a.name
                if self.names is None or name not in self.names:
                    raise ConfigError(
                        f"{self.path}: axis {name!r} is not an axis of this leaf "
                        f"(axes: {self.names if self.names is not None else self.shape})"
                    )
                out.append(self.names.index(name))
        return tuple(out)


def _walk(tree: PyTree) -> tuple[list[_Leaf | Any], Any]:
    """Flattens ``tree`` to per-leaf descriptions (``None``/``MaskedNode`` leaves stay as they are)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)
    out: list[_Leaf | Any] = []
    for keypath, leaf in flat:
        if leaf is None or isinstance(leaf, optax.MaskedNode):
            out.append(leaf)
            continue
        parts: list[str] = []
        class_parts: list[str] = []
        ancestors: list[tuple[Any, str]] = []
        node = tree
        for key in keypath:
            name = _key_name(key)
            if isinstance(node, eqx.Module):
                class_parts.append(type(node).__name__)
            ancestors.append((node, name))
            parts.append(name)
            class_parts.append(name)
            node = _child(node, key) if node is not None else None
        out.append(_Leaf(".".join(parts), ".".join(class_parts), tuple(parts), leaf, ancestors))
    return out, treedef


def _matches_any_component(components: Sequence[str], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(c, p) for c in components for p in patterns)


@dataclass(frozen=True)
class ParamLabeler:
    """Resolves a :class:`ParamLabel` for every leaf of a parameter tree (rules in the module doc).

    ``overrides`` maps fnmatch patterns (matched against the dotted path or the class path) to a
    kind or a kind with axes (strings as in :meth:`LabelSpec.parse`). ``head_names`` are path
    components naming an output head; ``embedding_names`` fnmatch patterns naming an embedding
    table (used for leaves outside a known module).
    """

    overrides: Mapping[str, str | LabelSpec] = field(default_factory=dict)
    head_names: tuple[str, ...] = DEFAULT_HEAD_NAMES
    embedding_names: tuple[str, ...] = DEFAULT_EMBEDDING_NAMES

    def __post_init__(self) -> None:
        parsed = {}
        for pattern, spec in dict(self.overrides or {}).items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"param_labels: pattern {pattern!r} must be a non-empty string")
            parsed[pattern] = LabelSpec.parse(spec, where=f"param_labels[{pattern!r}]")
        object.__setattr__(self, "overrides", parsed)

    # -- resolving ---------------------------------------------------------------------------

    def labels(self, tree: PyTree, *, strict: bool = True) -> PyTree:
        """A tree shaped like ``tree`` with a :class:`ParamLabel` at every parameter leaf.

        haliax ``NamedArray``s are labelled whole; ``None`` and ``optax.MaskedNode`` leaves are
        kept as they are (so the result also lines up with a tree masked by
        ``optax.multi_transform``). With ``strict`` (the default) an override pattern that
        matches no leaf raises ``ConfigError`` (checked on unmasked trees only).
        """
        leaves, treedef = _walk(tree)
        used: set[str] = set()
        out = [leaf if not isinstance(leaf, _Leaf) else self._label(leaf, used) for leaf in leaves]
        # A tree masked by an outer multi_transform cannot tell whether a pattern matches
        # elsewhere, so only complete trees are checked.
        if strict and not any(isinstance(leaf, optax.MaskedNode) for leaf in leaves):
            unused = [p for p in self.overrides if p not in used]
            if unused:
                paths = [leaf.path for leaf in leaves if isinstance(leaf, _Leaf)]
                example = ", ".join(paths[:4]) + (", ..." if len(paths) > 4 else "")
                raise ConfigError(
                    f"param_labels: pattern(s) {', '.join(repr(p) for p in unused)} match no parameter; "
                    f"paths look like: {example}"
                )
        return jax.tree_util.tree_unflatten(treedef, out)

    def kinds(self, tree: PyTree) -> PyTree:
        """The kind (``"matrix"``, ``"embedding"``, ``"head"``, ``"vector"``) of every leaf."""
        return jax.tree.map(_on_labels(lambda lab: lab.kind), self.labels(tree), is_leaf=_is_label)

    def branch_labels(self, branches: Mapping[str, str]) -> Callable[[PyTree], PyTree]:
        """``params -> tree of branch names`` for ``optax.multi_transform``, from ``{kind: branch}``."""
        missing = [k for k in KINDS if k not in branches]
        if missing:
            raise ValueError(f"branch_labels: no branch for kind(s) {missing}")

        def fn(tree: PyTree) -> PyTree:
            return jax.tree.map(
                _on_labels(lambda lab: branches[lab.kind]), self.labels(tree), is_leaf=_is_label
            )

        return fn

    def matrix_axes(self, tree: PyTree) -> PyTree:
        """A tree of :class:`MatrixAxes` (matrices and heads with a known view) or ``None``.

        Not strict: it is called on the masked trees ``optax.multi_transform`` hands to a branch.
        """
        return jax.tree.map(
            _on_labels(lambda lab: lab.axes if lab.kind in ("matrix", "head") else None),
            self.labels(tree, strict=False),
            is_leaf=_is_label,
        )

    def _label(self, leaf: _Leaf, used: set[str]) -> ParamLabel:
        hits = [
            p
            for p in self.overrides
            if fnmatch.fnmatchcase(leaf.path, p) or fnmatch.fnmatchcase(leaf.class_path, p)
        ]
        if len(hits) > 1:
            raise ConfigError(
                f"param_labels: {leaf.path} is matched by several patterns ({', '.join(map(repr, hits))}); "
                "make them disjoint"
            )
        used.update(hits)
        default = self._default(leaf)
        if not hits:
            return default
        spec: LabelSpec = self.overrides[hits[0]]  # type: ignore[assignment]
        reason = f"override {hits[0]!r}"
        axes: MatrixAxes | None
        if spec.fan_in is not None and spec.fan_out is not None:
            try:
                axes = MatrixAxes(leaf.shape, leaf.positions(spec.fan_in), leaf.positions(spec.fan_out))
            except ValueError as e:
                raise ConfigError(f"param_labels[{hits[0]!r}] on {leaf.path} {leaf.shape}: {e}") from None
        elif spec.kind in ("matrix", "head"):
            axes = default.axes if default.axes is not None else _plain_axes(leaf)
            if axes is None:
                raise ConfigError(
                    f"param_labels[{hits[0]!r}]: {leaf.path} has shape {leaf.shape}, which is not a "
                    f"matrix; give its axes, e.g. '{spec.kind}(in=0, out=1)'"
                )
        else:
            axes = None
        return ParamLabel(leaf.path, spec.kind, leaf.shape, axes, reason)

    def _default(self, leaf: _Leaf) -> ParamLabel:
        def label(kind: str, axes: MatrixAxes | None, reason: str) -> ParamLabel:
            return ParamLabel(leaf.path, kind, leaf.shape, axes, reason)  # type: ignore[arg-type]

        parent, attr = leaf.ancestors[-1] if leaf.ancestors else (None, "")
        module_components = leaf.components[:-1]
        is_head = _matches_any_component(module_components, self.head_names)

        # 2. linear layers
        if isinstance(parent, (hnn.Linear, hnn.MoELinear)) and haliax.is_named_array(leaf.leaf):
            if attr == "weight":
                axes = MatrixAxes(leaf.shape, leaf.positions(parent.In), leaf.positions(parent.Out))
                cls = type(parent).__name__
                return label("head" if is_head else "matrix", axes, f"haliax {cls}")
            if attr == "bias":
                return label("vector", None, "haliax Linear bias")
        if isinstance(parent, eqx.nn.Linear) and attr in ("weight", "bias"):
            if attr == "bias":
                return label("vector", None, "equinox Linear bias")
            axes = MatrixAxes.of(leaf.shape, -1, -2)
            return label("head" if is_head else "matrix", axes, "equinox Linear")
        if isinstance(parent, eqx.nn.Conv) and attr in ("weight", "bias"):
            if attr == "bias":
                return label("vector", None, "equinox Conv bias")
            core = 2 + parent.num_spatial_dims
            lead = len(leaf.shape) - core
            axes = MatrixAxes.of(leaf.shape, tuple(range(lead + 1, lead + core)), lead)
            return label("head" if is_head else "matrix", axes, "equinox Conv (kernel flattened into fan-in)")

        # 3. embeddings
        if isinstance(parent, (hnn.Embedding, eqx.nn.Embedding)) and attr == "weight":
            return label(
                "embedding", None, f"{'haliax' if isinstance(parent, hnn.Embedding) else 'equinox'} Embedding"
            )

        # 4. vectors
        if any(isinstance(node, _NORM_CLASSES) for node, _ in leaf.ancestors):
            return label("vector", None, "normalisation layer")
        if len(leaf.shape) - len(self._batch_axes(leaf)) < 2:
            return label("vector", None, "fewer than 2 non-batch axes")

        # 5. other arrays
        plain = _plain_axes(leaf, self._batch_axes(leaf))
        if is_head or _matches_any_component(leaf.components[-1:], self.head_names):
            return label("head", plain, "named like an output head")
        names = [c for c in leaf.components if not fnmatch.fnmatchcase(c, "*unembed*")]
        if _matches_any_component(names, self.embedding_names):
            return label("embedding", None, "named like an embedding")
        return label("matrix", plain, "array with >= 2 axes, assumed x @ W (in=-2, out=-1)")

    @staticmethod
    def _batch_axes(leaf: _Leaf) -> tuple[int, ...]:
        """Layer axes of haliax ``Stacked`` / ``ArrayStacked`` modules above this leaf: a named
        array's by the layer axis's name; a plain array's leading ones, one per stacking module
        (haliax's ``vmap`` puts the layer axis of an unnamed output first, the outermost first)."""
        batch: list[int] = []
        plain = 0
        for node, _ in leaf.ancestors:
            if not isinstance(node, (hnn.Stacked, hnn.ArrayStacked)) or not leaf.shape:
                continue
            if leaf.names is None:
                batch.append(plain)
                plain += 1
            elif isinstance(node, hnn.Stacked) and node.Block.name in leaf.names:
                batch.append(leaf.names.index(node.Block.name))
            elif isinstance(node, hnn.ArrayStacked):
                batch.append(0)
        return tuple(sorted(set(batch)))

    # -- printing ----------------------------------------------------------------------------

    def describe(self, tree: PyTree, branches: Mapping[str, str] | None = None) -> str:
        """A table of every leaf: path, shape, kind (and branch), matrix view, and why.

        Works on abstract trees too (``jax.eval_shape`` output).
        """
        labels = [
            lab
            for lab in jax.tree.leaves(self.labels(tree), is_leaf=_is_label)
            if isinstance(lab, ParamLabel)
        ]
        rows = [("path", "shape", "kind", "matrix view", "rule")]
        for lab in labels:
            kind = lab.kind if branches is None else f"{lab.kind} -> {branches[lab.kind]}"
            rows.append(
                (lab.path, "x".join(map(str, lab.shape)) or "()", kind, str(lab.axes or "-"), lab.reason)
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows
        ]
        counts = {k: sum(1 for lab in labels if lab.kind == k) for k in KINDS}
        sizes = {k: sum(math.prod(lab.shape) for lab in labels if lab.kind == k) for k in KINDS}
        summary = ", ".join(f"{counts[k]} {k} ({sizes[k]:,} values)" for k in KINDS if counts[k])
        return "\n".join([*lines, summary])


def _is_label(x: Any) -> bool:
    return isinstance(x, ParamLabel) or x is None or isinstance(x, optax.MaskedNode)


def _on_labels(fn: Callable[[ParamLabel], Any]) -> Callable[[Any], Any]:
    """Applies ``fn`` to labels; ``None`` and ``MaskedNode`` positions pass through unchanged."""
    return lambda lab: fn(lab) if isinstance(lab, ParamLabel) else lab


def _plain_axes(leaf: _Leaf, batch: tuple[int, ...] = ()) -> MatrixAxes | None:
    """``x @ W`` layout over the non-batch axes: the last two are (in, out), earlier ones batch."""
    core = [i for i in range(len(leaf.shape)) if i not in batch]
    if len(core) < 2:
        return None
    return MatrixAxes(leaf.shape, (core[-2],), (core[-1],))


def describe_labels(params: PyTree, overrides: Mapping[str, str] | None = None) -> str:
    """Shorthand for ``ParamLabeler(overrides).describe(params)``: the printable assignment."""
    return ParamLabeler(overrides or {}).describe(params)


GRUG_ADAMW_NAMES: tuple[str, ...] = ("embed", "lm_head", "output")
"""Path substrings (lowercase) that Levanter's ``grug_muon`` hands to AdamW."""
GRUG_STACKED_NAMES: tuple[str, ...] = ("w_up_gate", "w_gate_up", "w_down")
"""Path substrings (lowercase) of the 3-D (layer-stacked) arrays ``grug_muon`` orthogonalises."""


@dataclass(frozen=True)
class GrugLabeler(ParamLabeler):
    """Levanter's ``grug_muon`` routing, for raw arrays in the ``(fan_in, fan_out)`` layout.

    Rules after the overrides: a path containing ``embed``, ``lm_head`` or ``output`` (any
    case) is ``embedding`` / ``head``; any other 2-D array is a ``matrix`` (``in=0, out=1``); a
    3-D array whose path contains ``w_up_gate``, ``w_gate_up`` or ``w_down`` is a stack of
    them (axis 0 a batch); everything else is a ``vector``. Only the path and the number of
    axes count (haliax axis names and module types do not).
    """

    def _default(self, leaf: _Leaf) -> ParamLabel:
        path = leaf.path.lower()
        ndim = len(leaf.shape)
        if "embed" in path:
            return ParamLabel(leaf.path, "embedding", leaf.shape, None, "grug: path names an embedding")
        if any(name in path for name in GRUG_ADAMW_NAMES):
            return ParamLabel(leaf.path, "head", leaf.shape, None, "grug: path names an output")
        if ndim == 2:
            return ParamLabel(leaf.path, "matrix", leaf.shape, MatrixAxes.of(leaf.shape, 0, 1), "grug: 2-D")
        if ndim == 3 and any(name in path for name in GRUG_STACKED_NAMES):
            axes = MatrixAxes.of(leaf.shape, 1, 2)
            return ParamLabel(leaf.path, "matrix", leaf.shape, axes, "grug: stacked 3-D MLP weight")
        return ParamLabel(leaf.path, "vector", leaf.shape, None, "grug: not a routed matrix")
