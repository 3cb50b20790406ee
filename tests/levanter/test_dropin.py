"""The drop-in table: every optimizer in Levanter's live registry, by its name, fields and numbers.

Built from the registry Levanter has at run time, so a Levanter release that adds an optimizer
or a field fails here until marin_optim follows. ``pytest tests/levanter/test_dropin.py -s``
prints the table the README carries.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dropin import ELEMENTWISE, TOLERANCE, compare, levanter_block, levanter_class, levanter_names, load_ours

from marin_optim import OptimizerConfig
from marin_optim.levanter import field_differences

NOT_YET: dict[str, str] = {}
"""Levanter names marin_optim does not have yet; the README's table says the same."""

COMPARED_ELSEWHERE = {
    "grug_muon": "Grug's raw (fan_in, fan_out) arrays: on a haliax Llama Levanter's sends every Linear "
    "to AdamW and fails under jit without a mesh; compared in test_dropin_namo.py",
    "kron": "Levanter's Kron deadlocks jitted on a CPU (batched triangular solves under vmap); compared "
    "with its side run eagerly in test_dropin_kron.py",
    "soap": "Levanter's SOAP deadlocks jitted on a CPU (batched QR/eigh under vmap); compared with "
    "its side run eagerly in test_dropin_soap.py",
}
"""Levanter names whose update is compared in another file, and why."""

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_levanter_name_is_ours_or_listed_as_not_yet():
    names = set(levanter_names())
    ours = set(OptimizerConfig.registered())
    assert set(NOT_YET) <= names, f"names Levanter no longer has: {sorted(set(NOT_YET) - names)}"
    assert not set(NOT_YET) & ours, f"implemented now, remove from NOT_YET: {sorted(set(NOT_YET) & ours)}"
    assert names - set(NOT_YET) <= ours, f"Levanter names we lack: {sorted(names - set(NOT_YET) - ours)}"


def _ours() -> list[str]:
    return [name for name in levanter_names() if name not in NOT_YET]


@pytest.mark.parametrize("name", _ours())
def test_levanters_block_loads_unchanged_and_means_our_defaults(name):
    """Every field Levanter's config has is ours, with Levanter's default: its whole default block
    loads into our class and equals our default config."""
    ours = OptimizerConfig.get_choice_class(name)
    only_levanter, _, defaults = field_differences(ours, levanter_class(name))
    assert not only_levanter, f"{name}: fields only Levanter's has: {only_levanter}"
    assert not defaults, f"{name}: other defaults (ours vs Levanter's): {defaults}"
    assert load_ours(name, levanter_block(name)) == ours()


@pytest.mark.parametrize("name", [n for n in _ours() if n not in COMPARED_ELSEWHERE])
def test_our_update_is_levanters(name):
    """10 updates of a Levanter Llama's parameters from Levanter's default block, ours and theirs."""
    difference = compare(name)
    tolerance = TOLERANCE.get(name, ELEMENTWISE)
    print(f"{name}: relative difference of the parameter change {difference:.1e} (<= {tolerance:.0e})")
    assert difference <= tolerance


def test_the_readme_table_lists_every_levanter_name():
    """The README's drop-in table has one row per Levanter name, in registry order, saying which
    are not implemented yet and the tolerance each row is held to."""
    text = README.read_text()
    section = text.split("<!-- drop-in table -->")[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]
    assert names == levanter_names()
    for name, row in zip(names, rows, strict=True):
        if name in NOT_YET:
            assert "not yet" in row, row
        else:
            assert f"`{name}`" in row.split("|")[2], row
            assert f"{TOLERANCE.get(name, ELEMENTWISE):.0e}" in row, row
