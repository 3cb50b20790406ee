"""Adam-mini (Levanter's ``mini``): Adam with one second moment per head, neuron or token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import optax

from marin_optim.config import OptimizerConfig
from marin_optim.labels import ParamLabel
from marin_optim.optimizers.muon import MatrixOptimizerConfig, check_unread_lr
from marin_optim.transforms.adam_mini import adam_mini_blocks, blocks_of, scale_by_adam_mini
from marin_optim.validation import check_choice

GROUP = "Adam family"

PyTree = Any


@OptimizerConfig.register_subclass("mini")
@dataclass(frozen=True)
class MiniConfig(MatrixOptimizerConfig):
    """Adam-mini: Adam with one second moment per block (attention head, output neuron, token).

    Update rule (Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More",
    https://arxiv.org/abs/2406.16793; see :func:`~marin_optim.transforms.scale_by_adam_mini`),
    for each block ``B`` and element ``i`` of it, at step ``t``::

        m_i = beta1 m_i + (1 - beta1) g_i;   v_B = beta2 v_B + (1 - beta2) mean_{j in B} g_j^2
        p_i = p_i - lr (m_hat_i / (sqrt(v_hat_B) + epsilon) + weight_decay p_i)

    with Adam's bias corrections. Blocks (the paper's partition, as in Levanter's ``mini``):
    query and key projections per attention head, value, attention output and MLP projections
    per output neuron, the embedding and the LM head per token; norm gains and biases are on
    plain Adam (Levanter's choice; the authors' code gives each such tensor one block).
    ``describe_labels(params)`` prints each parameter's blocks; ``param_labels`` changes what a
    parameter is taken for. The second moment is stored per block, so the state is about 4
    bytes per parameter (Levanter stores a full-size second moment).

    Fields, defaults and numbers are Levanter's ``mini`` (``max_grad_norm`` clips the Adam
    parameters only, by their own norm; ``lr`` is declared and never read, ``learning_rate``
    is the rate). Ours adds ``clip_scope: all`` (one global clip), ``param_labels``,
    ``cautious_weight_decay`` and the schedule, guard and group fields. Two deliberate
    differences, neither on by default nor visible on a multi-head-attention Llama:
    ``nesterov: true`` applies Nesterov momentum (Levanter accepts and ignores it), and blocks
    are found by axis names, not positions (unstacked layers get the stacked partition; under
    grouped-query attention the query projection has one block per query head, as in the
    authors' code, where Levanter's has one per key/value head).
    """

    lr: float = 0.02
    """Levanter's unread field: accepted at 0.02 only (learning_rate is the learning rate)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (with the configured mask), multiplied by the learning rate."""
    beta1: float = 0.9
    """Decay rate of the first moment (one per element)."""
    beta2: float = 0.95
    """Decay rate of the second moment (one per block; per element for norms and biases)."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat)."""
    nesterov: bool = False
    """Nesterov momentum (Dozat's form, as adam's nesterov); Levanter's mini ignores it."""
    clip_scope: Literal["adam", "all"] = "adam"
    """What max_grad_norm clips: adam = the gradients of the parameters on plain Adam (norm
    gains, biases) by their own norm (Levanter), all = one global clip over every parameter."""

    BRANCHES: ClassVar[dict[str, str]] = {
        "matrix": "mini",
        "embedding": "mini",
        "head": "mini",
        "vector": "adam",
    }

    def validate(self) -> None:
        super().validate()
        check_unread_lr(self, "Adam-mini")
        check_choice(self, "clip_scope", ("adam", "all"))

    def block_layout(self) -> Any:
        """``tree -> tree of MiniBlocks``: this config's partition (with its ``param_labels``)."""
        return adam_mini_blocks(self.labeler())

    def update_rule(self, hp: Mapping[str, Any]) -> optax.GradientTransformation:
        lr = hp["learning_rate"]
        mini = scale_by_adam_mini(
            self.block_layout(), self.beta1, self.beta2, self.epsilon, nesterov=self.nesterov
        )
        adam = optax.chain(
            *self.branch_clip("adam"),
            optax.scale_by_adam(self.beta1, self.beta2, self.epsilon, nesterov=self.nesterov),
        )
        return self.partition({"mini": self.branch(hp, mini, lr), "adam": self.branch(hp, adam, lr)})

    def describe_labels(self, params: PyTree) -> str:
        """A printable table: every parameter's kind, branch and second-moment blocks."""
        labels = [
            lab
            for lab in jax.tree.leaves(
                self.labeler().labels(params), is_leaf=lambda x: isinstance(x, ParamLabel)
            )
            if isinstance(lab, ParamLabel)
        ]
        rows = [("path", "shape", "kind", "second moment: blocks x size")]
        n_params = n_values = 0
        for lab in labels:
            blocks = blocks_of(lab)
            n_params += blocks.num_blocks * blocks.block_size
            n_values += blocks.num_blocks
            kind = f"{lab.kind} -> {self.branches[lab.kind]}"
            rows.append((lab.path, "x".join(map(str, lab.shape)) or "()", kind, str(blocks)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows
        ]
        lines.append(f"{n_values:,} second-moment values for {n_params:,} parameters")
        return "\n".join(lines)
