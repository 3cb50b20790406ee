"""Paths of parameter trees (equinox, haliax, dicts) and the weight-decay mask built from them.

A leaf's *path* is its dotted attribute/key path from the root (``blocks.attn.q_proj.weight``);
its *class path* interleaves the class names of the modules it sits in
(``Transformer.blocks.Stacked.stacked.Block.attn.Attention.q_proj.Linear.weight``), so rules can
name module types the way Levanter's default mask does. Haliax ``NamedArray``s are leaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import haliax
import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

PyTree = Any


def is_leaf(x: Any) -> bool:
    """Parameter leaves: haliax NamedArrays (kept whole, with their axes) and ``None``."""
    return haliax.is_named_array(x) or x is None


def _key_name(key: Any) -> str:
    """A path key as it appears in a dotted path: attribute name, dict key or sequence index."""
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, SequenceKey):
        return str(key.idx)
    if isinstance(key, FlattenedIndexKey):
        return str(key.key)
    return str(key).strip(".[]'\"")


def _child(node: Any, key: Any) -> Any:
    """The child of ``node`` under path key ``key`` (``None`` where it cannot be followed)."""
    try:
        if isinstance(key, GetAttrKey):
            return getattr(node, key.name)
        if isinstance(key, DictKey):
            return node[key.key]
        if isinstance(key, SequenceKey):
            return node[key.idx]
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    return None


def _paths(tree: PyTree, with_classes: bool) -> PyTree:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    out = []
    for keypath, _ in flat:
        parts: list[str] = []
        node = tree
        for key in keypath:
            if with_classes and isinstance(node, eqx.Module):
                parts.append(type(node).__name__)
            parts.append(_key_name(key))
            node = _child(node, key) if node is not None else None
        out.append(".".join(parts))
    return jax.tree_util.tree_unflatten(treedef, out)


def leaf_paths(tree: PyTree) -> PyTree:
    """A tree shaped like ``tree`` whose leaves are their dotted paths (``blocks.attn.q_proj.weight``).

    >>> import jax.numpy as jnp
    >>> leaf_paths({"attn": {"q": jnp.ones(2)}, "norm": [jnp.ones(2)]})
    {'attn': {'q': 'attn.q'}, 'norm': ['norm.0']}
    """
    return _paths(tree, with_classes=False)


def leaf_class_paths(tree: PyTree) -> PyTree:
    """Like :func:`leaf_paths`, with the class name of every module on the way inserted."""
    return _paths(tree, with_classes=True)


# Levanter's default: no decay for norms, embeddings and biases.
_NO_DECAY_CLASSES = ("LayerNorm", "RMSNorm", "RmsNorm", "Embedding")


def default_no_decay(path: str, class_path: str) -> bool:
    """True where Levanter's default rule exempts a leaf from weight decay."""
    return any(name in class_path for name in _NO_DECAY_CLASSES) or path.endswith("bias")


def weight_decay_mask(
    modules: str | Sequence[str] | None, use_default: bool | None
) -> Callable[[PyTree], PyTree] | None:
    """Builds an ``optax.add_decayed_weights`` mask function (``True`` = decay this leaf).

    ``modules``: a regular expression (``re.match`` against the dotted path or the class path)
    or a list of substrings (any of them in either path). ``use_default`` follows Levanter:
    ``None`` applies the default rule (no decay for LayerNorm/RMSNorm/Embedding modules and
    biases) only when no modules are named; ``True`` applies it on top of ``modules``; ``False``
    never applies it. With no modules and ``use_default=False`` the result is ``None``: every
    leaf is decayed.

    >>> import jax.numpy as jnp
    >>> mask = weight_decay_mask(None, None)  # Levanter's default rule
    >>> mask({"proj": {"weight": jnp.ones((2, 2)), "bias": jnp.ones(2)}})
    {'proj': {'bias': False, 'weight': True}}
    """
    if modules is None and use_default is False:
        return None
    apply_default = use_default is True or (use_default is None and modules is None)
    if isinstance(modules, str):
        regex = re.compile(modules)
        selected: Callable[[str, str], bool] = lambda p, c: bool(regex.match(p) or regex.match(c))
    elif modules is not None:
        names = tuple(modules)
        selected = lambda p, c: any(n in p or n in c for n in names)
    else:
        selected = lambda p, c: True

    def decide(path: str, class_path: str) -> bool:
        if apply_default and default_no_decay(path, class_path):
            return False
        return selected(path, class_path)

    def mask_fn(params: PyTree) -> PyTree:
        return jax.tree.map(
            lambda leaf, p, c: None if leaf is None else decide(p, c),
            params,
            leaf_paths(params),
            leaf_class_paths(params),
            is_leaf=is_leaf,
        )

    return mask_fn
