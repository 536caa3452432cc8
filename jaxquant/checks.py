"""Validation helpers shared by every layer (a leaf: it imports nothing of jaxquant)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def check_choice(value: Any, allowed: tuple[str, ...] | list[str], field: str) -> Any:
    """Raise a one-line ``ValueError`` naming ``field`` and the allowed values."""
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed: choose one of {list(allowed)}")
    return value


def closest(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the names closest to ``name``, or ``''`` when none is close."""
    matches = difflib.get_close_matches(str(name), sorted(names), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"
