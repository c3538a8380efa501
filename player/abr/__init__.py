"""ABR rules by name: the reference rules, each behind :class:`player.abr.base.AbrRule`.

``make_rule("bola-e")`` builds one with its published defaults; an unknown name fails with a
``ValueError`` that lists the known ones.
"""

from __future__ import annotations

from player.abr.base import AbrContext, AbrRule, Download
from player.abr.bba import BbaRule
from player.abr.bola import BolaERule
from player.abr.dynamic import DynamicRule
from player.abr.mpc import RobustMpcRule
from player.abr.ours import Ours
from player.abr.throughput import ThroughputRule

# Typed loosely: AbrRule.name is a settable attribute in the Protocol, which frozen-dataclass
# rules (a read-only field, or a ClassVar) do not satisfy for mypy; each entry still has to
# build an AbrRule (make_rule's return type, and tests/player/test_abr.py).
RULES: dict[str, type] = {
    ThroughputRule.name: ThroughputRule,
    BbaRule.name: BbaRule,
    BolaERule.name: BolaERule,
    RobustMpcRule.name: RobustMpcRule,
    DynamicRule.name: DynamicRule,
    Ours.name: Ours,  # the project's own rule (player/abr/ours.py)
}

DEFAULT_RULE = Ours.name


def make_rule(name: str) -> AbrRule:
    """A new rule of the given name, with its default parameters."""
    try:
        cls = RULES[name]
    except KeyError:
        known = ", ".join(sorted(RULES))
        raise ValueError(f"unknown ABR rule {name!r}; known rules: {known}") from None
    return cls()


__all__ = ["DEFAULT_RULE", "RULES", "AbrContext", "AbrRule", "Download", "make_rule"]
