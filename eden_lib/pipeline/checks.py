"""Validation of a stage's own params block (``anatomy``, ``claims.<name>``): one rule per key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: key -> (predicate on the value, what is expected, for the error)
Rules = Mapping[str, tuple[Callable[[Any], bool], str]]


def int_at_least(minimum: int) -> Callable[[Any], bool]:
    """A rule's predicate: an integer (not a bool) >= ``minimum``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def check_block(prefix: str, block: Any, rules: Rules) -> None:
    """Check that ``block`` (params at ``prefix``) has exactly the keys of ``rules`` and values they accept.

    Raises:
        ValueError: naming ``<prefix>.<key>``, the value and what is expected (unknown and missing keys too).
    """
    if not isinstance(block, Mapping):
        raise ValueError(f"{prefix} = {block!r}: expected a mapping with keys {sorted(rules)}")
    unknown = sorted(set(block) - set(rules))
    if unknown:
        raise ValueError(f"{prefix}: unknown keys {[f'{prefix}.{k}' for k in unknown]}; allowed: {sorted(rules)}")
    missing = [k for k in rules if k not in block]
    if missing:
        raise ValueError(f"{prefix}: missing keys {[f'{prefix}.{k}' for k in missing]}")
    for key, (ok, expected) in rules.items():
        if not ok(block[key]):
            raise ValueError(f"{prefix}.{key} = {block[key]!r}: expected {expected}")
