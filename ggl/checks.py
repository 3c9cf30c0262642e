"""The value checks every constructor and config reader shares; each error names the field and what it needs."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


def positive_int(field: str, value: Any) -> int:
    """``value`` as an int >= 1 (bools refused); ``ValueError`` naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(field: str, value: Any) -> int:
    """``value`` as an int >= 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return int(value)


def _real(field: str, value: Any, needs: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a {needs} number, got {value!r}")
    return float(value)


def positive_number(field: str, value: Any) -> float:
    """``value`` as a finite float > 0."""
    number = _real(field, value, "positive")
    if not number > 0:
        raise ValueError(f"{field} must be a positive number, got {value!r}")
    return number


def non_negative_number(field: str, value: Any) -> float:
    """``value`` as a finite float >= 0."""
    number = _real(field, value, "non-negative")
    if not number >= 0:
        raise ValueError(f"{field} must be a non-negative number, got {value!r}")
    return number


def boolean(field: str, value: Any) -> bool:
    """``value`` if it is True or False (no truthy strings or numbers)."""
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be True or False, got {value!r}")
    return value


def one_of(field: str, value: Any, allowed: Collection[Any]) -> Any:
    """``value`` if it is in ``allowed``; the error lists the allowed values."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(str(a) for a in allowed)}, got {value!r}")
    return value
