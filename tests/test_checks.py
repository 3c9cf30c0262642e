"""The shared value checks: each returns the value or raises a ValueError naming the field."""

from __future__ import annotations

import math

import pytest

from ggl.checks import boolean, non_negative_int, non_negative_number, one_of, positive_int, positive_number


def test_positive_int() -> None:
    assert positive_int("count", 3) == 3
    for bad in (0, -1, 1.0, "2", True, None):
        with pytest.raises(ValueError, match=f"^count must be a positive integer, got {bad!r}$"):
            positive_int("count", bad)


def test_non_negative_int() -> None:
    assert non_negative_int("steps", 0) == 0
    for bad in (-1, 0.0, False, "0"):
        with pytest.raises(ValueError, match="^steps must be a non-negative integer"):
            non_negative_int("steps", bad)


def test_positive_number() -> None:
    assert positive_number("lr", 2) == 2.0 and isinstance(positive_number("lr", 2), float)
    assert positive_number("lr", 1e-9) == 1e-9
    for bad in (0, 0.0, -1.5, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="^lr must be a positive number"):
            positive_number("lr", bad)


def test_non_negative_number() -> None:
    assert non_negative_number("sigma", 0) == 0.0
    for bad in (-0.1, math.nan, -math.inf, math.inf, False, None):
        with pytest.raises(ValueError, match="^sigma must be a non-negative number"):
            non_negative_number("sigma", bad)


def test_boolean() -> None:
    assert boolean("gpu", True) is True and boolean("gpu", False) is False
    for bad in (0, 1, "true", None):
        with pytest.raises(ValueError, match="^gpu must be True or False"):
            boolean("gpu", bad)


def test_one_of() -> None:
    assert one_of("mode", "global", ("global", "per_layer")) == "global"
    with pytest.raises(ValueError, match="^mode must be one of global, per_layer, got 'layer'$"):
        one_of("mode", "layer", ("global", "per_layer"))
