"""Validation of user-supplied dataset option values.

Options arrive from the CLI, the Streamlit UI and tests; every dataset checks them with the one
``lca.spec.Spec`` that RunConfig fields and technique options use, so the rules and the
one-sentence errors are the same everywhere. Checks are strict: ``True`` is not a number (it
would silently behave as 1) and text is not a number.
"""

from __future__ import annotations

from lca.spec import Spec

from .dataset import DataError


def _where(name: str) -> str:
    return f"Option {name!r}"


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise DataError if it is not an integer in range."""
    return Spec(kind=int, minimum=minimum, maximum=maximum).parse(value, _where(name), DataError)


def check_float(name: str, value: object) -> float:
    """Return ``value`` as a finite float, or raise DataError."""
    return Spec(kind=float).parse(value, _where(name), DataError)


def check_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a float >= 0, or raise DataError."""
    return Spec(kind=float, minimum=0).parse(value, _where(name), DataError)


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float strictly between 0 and 1, or raise DataError."""
    return Spec(kind=float, above=0, below=1).parse(value, _where(name), DataError)


def check_seed(seed: object) -> int:
    """Return ``seed`` as a non-negative int (numpy Generators refuse negative seeds)."""
    return Spec(kind=int, minimum=0).parse(seed, "Seed", DataError)
