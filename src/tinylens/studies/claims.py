"""A paper's claim checked on our models: the verdict and its rule text come from one threshold.

Background:
    A claim is judged by one or more :class:`Condition` s, each a measured value, a comparison and a
    threshold. The rule a reader sees ("exact match > 99.5%") and the verdict are both computed from
    that one condition, so they cannot drift apart. A claim may carry its control's value (a
    random-init model, shuffled labels, random circuits) so the table shows both.

Usage:
    Claim.at_least("The model is accurate", "> 99.5%", exact, 0.995, "exact match", fmt="{:.1%}",
                   measured=f"{exact:.2%} on fresh questions")
    Claim.of("…", "…", measured, [Condition("accuracy", acc, ">=", 0.9, "{:.0%}"), …])
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Comparison = Literal[">=", ">", "<=", "<", "=="]

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_SYMBOLS = {">=": "≥", ">": ">", "<=": "≤", "<": "<", "==": "="}


def _finite_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)


@dataclass(frozen=True)
class Condition:
    """One test of a claim: ``value <op> threshold``; a value that is not a finite number never
    passes."""

    what: str
    """The measured quantity, in words (e.g. "exact match on cascades")."""
    value: float | int
    """What we measured."""
    op: Comparison
    threshold: float | int
    """The bound the value is held to."""
    fmt: str = "{:.3g}"
    """How values and the threshold print (e.g. ``"{:.1%}"``); ``"flag"`` for a yes/no test."""

    @classmethod
    def requires(cls, what: str, flag: bool) -> Condition:
        """A yes/no test: holds when ``flag`` is true; its rule is ``what`` itself."""
        return cls(what, float(flag), ">=", 1.0, "flag")

    @property
    def holds(self) -> bool:
        """``value <op> threshold``, and never for a value that is not a finite number (NaN, an
        infinite ratio such as 0/0 taken as ∞): what was not measured does not hold."""
        if not (_finite_number(self.value) and _finite_number(self.threshold)):
            return False
        return bool(_OPERATORS[self.op](self.value, self.threshold))

    @property
    def rule(self) -> str:
        if self.fmt == "flag":
            return self.what
        return f"{self.what} {_SYMBOLS[self.op]} {self.fmt.format(self.threshold)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "op": self.op,
            "threshold": self.threshold,
            "holds": self.holds,
        }


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, checked on our models: it holds when every condition does."""

    claim: str
    """The paper's statement."""
    expected: str
    """What the paper reports."""
    measured: str
    """What we measured, with units."""
    conditions: tuple[Condition, ...]
    """The tests; an empty tuple means the claim could not be measured (it does not hold)."""
    note: str = ""
    """Why the rule is what it is, or why it was not measured; appended to the rule text."""
    control: float | None = None
    """The control's value (random init, shuffled labels, random circuits), when there is one."""

    @property
    def holds(self) -> bool:
        return bool(self.conditions) and all(c.holds for c in self.conditions)

    @property
    def rule(self) -> str:
        text = " and ".join(c.rule for c in self.conditions) or "not measured"
        return f"{text} ({self.note})" if self.note else text

    @classmethod
    def of(
        cls,
        claim: str,
        expected: str,
        measured: str,
        conditions: Sequence[Condition],
        *,
        note: str = "",
        control: float | None = None,
    ) -> Claim:
        return cls(claim, expected, measured, tuple(conditions), note, control)

    @classmethod
    def at_least(
        cls,
        claim: str,
        expected: str,
        value: float | int,
        threshold: float | int,
        what: str,
        *,
        fmt: str = "{:.3g}",
        measured: str | None = None,
        note: str = "",
        control: float | None = None,
    ) -> Claim:
        """A claim that holds when ``value ≥ threshold``; ``measured`` defaults to the value."""
        condition = Condition(what, value, ">=", threshold, fmt)
        text = measured if measured is not None else f"{what} {fmt.format(value)}"
        return cls(claim, expected, text, (condition,), note, control)

    @classmethod
    def not_measured(cls, claim: str, expected: str, why: str) -> Claim:
        """A claim the study could not test on this model: reported, never held."""
        return cls(claim, expected, f"not measured: {why}", (), why)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "expected": self.expected,
            "measured": self.measured,
            "holds": self.holds,
            "rule": self.rule,
            "conditions": [c.to_dict() for c in self.conditions],
            "control": self.control,
        }
