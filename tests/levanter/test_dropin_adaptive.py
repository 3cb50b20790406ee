"""Levanter's ``adopt``, ``mars`` and ``cautious`` with non-default fields: ours gives its numbers.

``test_dropin.py`` compares the default blocks; here every field these three add to the common
ones is moved off its default at least once (and ``max_grad_norm: 0.0``, Levanter's "no clip").
"""

from __future__ import annotations

import pytest
from dropin import ELEMENTWISE, compare, levanter_block

from marin_optim import ConfigError, OptimizerConfig

VARIANTS = [
    (
        "adopt",
        dict(beta1=0.8, beta2=0.9999, epsilon=1e-8, max_grad_norm=0.0, weight_decay=0.3, learning_rate=3e-3),
    ),
    # max_grad_norm clips the corrected gradient: off here (the default block has it active)
    ("mars", dict(max_grad_norm=0.0, beta1=0.9, beta2=0.95, gamma=0.05, epsilon=1e-6, weight_decay=0.0)),
    # AdamC's factor lr_t / learning_rate moves a lot under a linear decay; weight decay large
    ("cautious", dict(adamc_weight_decay=True, weight_decay=0.5, lr_schedule="linear")),
    ("cautious", dict(beta1=0.9, beta2=0.99, epsilon=1e-6, max_grad_norm=0.0, weight_decay=0.0)),
]


@pytest.mark.parametrize(("name", "fields"), VARIANTS, ids=lambda v: str(v))
def test_non_default_fields_give_levanters_update(name, fields):
    difference = compare(name, **fields)
    print(f"{name} {fields}: relative difference of the parameter change {difference:.1e}")
    assert difference <= ELEMENTWISE


def test_fields_levanter_declares_but_never_reads_are_refused_when_set():
    """Levanter ignores adopt's schedule_list and cautious's gamma: a value is refused, saying so."""
    with pytest.raises(ConfigError, match=r"adopt.schedule_list=\['cosine'\]: Levanter's adopt declares"):
        OptimizerConfig.from_dict({"type": "adopt", **levanter_block("adopt", schedule_list=["cosine"])})
    with pytest.raises(ConfigError, match=r"cautious.gamma=0.05: Levanter's cautious declares gamma"):
        OptimizerConfig.from_dict({"type": "cautious", **levanter_block("cautious", gamma=0.05)})
