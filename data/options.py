"""Validation of user-supplied option values.

Options arrive from the CLI, the Streamlit UI and tests; checking them in one place gives every
dataset the same rules and the same one-sentence error messages. Booleans are refused where a
number is expected because ``True`` silently behaving as ``1`` hides mistakes.
"""

from __future__ import annotations

import math
import numbers

from .dataset import DataError


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise DataError if it is not an integer in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"Option {name!r} must be an integer, got {value!r}; pass a whole number.")
    result = int(value)
    if result < minimum or (maximum is not None and result > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise DataError(f"Option {name!r} is {result}; it must be at least {minimum}{upper}.")
    return result


def check_float(name: str, value: object) -> float:
    """Return ``value`` as a finite float, or raise DataError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"Option {name!r} must be a number, got {value!r}; pass a float.")
    result = float(value)
    if not math.isfinite(result):
        raise DataError(f"Option {name!r} is {result}; it must be a finite number.")
    return result


def check_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a float >= 0, or raise DataError."""
    result = check_float(name, value)
    if result < 0:
        raise DataError(f"Option {name!r} is {result}; it must be zero or positive.")
    return result


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float strictly between 0 and 1, or raise DataError."""
    result = check_float(name, value)
    if not 0.0 < result < 1.0:
        raise DataError(
            f"Option {name!r} is {result}; it must be strictly between 0 and 1, e.g. 0.2."
        )
    return result


def check_seed(seed: object) -> int:
    """Return ``seed`` as a non-negative int (numpy Generators refuse negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise DataError(f"Seed {seed!r} is not usable; pass a non-negative integer such as 0.")
    return int(seed)
