"""Argument checks shared by the public constructors (Keras-style messages)."""

from __future__ import annotations

import math
import numbers


def non_negative(name: str, value, strict: bool = False) -> float:
    """Return `value` as a float, or raise if it is not a finite number >= 0 (> 0 if strict)."""
    bound = "> 0" if strict else ">= 0"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value_f = float(value)
        ok = math.isfinite(value_f) and (value_f > 0 if strict else value_f >= 0)
    if not ok:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a finite float {bound}. "
            f"Received: {name}={value!r}"
        )
    return value_f


def fraction(name: str, value, allow_none: bool = True) -> float | None:
    """Return `value` as a float in [0, 1), or raise."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = 0.0 <= float(value) < 1.0
    if not ok:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a float in [0, 1). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def open_fraction(name: str, value) -> float:
    """Return `value` as a float in (0, 1), or raise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a float in (0, 1). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_update_freq(value) -> str | int:
    """Return `value` if it is `"epoch"` or an int >= 1 (batches), or raise."""
    if value == "epoch":
        return value
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(
            "Invalid value for argument `update_freq`. Expected 'epoch' or an int >= 1 "
            f"(batches). Received: update_freq={value!r}"
        )
    return int(value)


def int_at_least(name: str, value, low: int) -> int:
    """Return `value` if it is an int >= `low`, or raise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an int >= {low}. "
            f"Received: {name}={value!r}"
        )
    return int(value)
