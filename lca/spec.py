"""One way to describe and check a value a user sets: a run's config field, a technique's
option, a dataset's or a model's option, a playground setting.

A ``Spec`` says the value's type, its allowed values or range, its default and its help; the
CLI flags and the Train form are built from it, and ``parse`` refuses a bad value with the one
sentence every part of LCA Lab uses:

    lr must be greater than 0, not 0.0.
    option 'sparsity' of technique 'prune-magnitude' must be at most 1.0, not 2.0.
    optimizer = 'rmsprop' is not allowed; choose one of: sgd, momentum, adam, adamw.

This module imports nothing from LCA Lab (nor torch), so ``lca``, ``techniques`` and ``data``
can all use it without an import cycle.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Spec", "SpecError", "setting", "spec_of"]

TRUE_TEXT = ("true", "1", "yes")
FALSE_TEXT = ("false", "0", "no")


class SpecError(ValueError):
    """A value is not allowed; the message is one sentence naming it and what is allowed."""


@dataclass(frozen=True)
class Spec:
    """What one setting may be, and how to ask for it.

    The first six fields keep the order of ``techniques.Option`` (default, help, kind, choices,
    minimum, maximum), which is this class.
    """

    default: Any = None
    help: str = ""
    kind: type = float  # bool | int | float | str | list | tuple | dict
    choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None  # callable: looked up late
    minimum: float | None = None  # inclusive bounds (of each item, for a list of numbers)
    maximum: float | None = None
    above: float | None = None  # exclusive lower bound ("greater than")
    below: float | None = None  # exclusive upper bound ("less than")
    optional: bool = False  # None is allowed (it means "not set": all, automatic, none)
    keywords: tuple[str, ...] = ()  # words allowed besides a value of ``kind``, e.g. ("auto",)
    item: type | None = None  # element type of a list/tuple (str when None)
    length: int | None = None  # a list/tuple of exactly this many items
    nonempty: bool = False  # a list/tuple of at least one item
    from_text: bool = False  # also take text ("0.5", "true", "a+b", "64, 32") and convert it
    example: str | None = None  # shown in the sentence: "such as 64, 32"
    # How the CLI and the Train form ask for it.
    label: str | None = None  # the form's label (default: the name, spaces for underscores)
    flag: str | None = None  # the CLI flag (default: --name-with-dashes; "" for none)
    widget: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # -- checking ------------------------------------------------------------------------------
    def allowed(self) -> tuple[Any, ...] | None:
        """The allowed values (a callable ``choices`` is called now), or None for any."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def parse(self, value: Any, name: str = "value", error: type[Exception] = SpecError) -> Any:
        """``value`` converted to ``kind`` and checked; else ``error`` with one sentence.

        ``name`` says what is being set, e.g. ``"lr"`` or ``"option 'n' of dataset 'xor'"``.
        """
        if value is None and self.optional:
            return None
        if isinstance(value, str) and value.strip().lower() in self.keywords:
            return value.strip().lower()
        allowed = self.allowed()
        if allowed is not None:
            if self.from_text:
                try:
                    value = self._convert(value)
                except (TypeError, ValueError):
                    pass  # refused below, as it was given
            is_bool = isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed)
            if is_bool or value not in allowed:  # True == 1, but True is not the choice 1
                raise error(
                    f"{name} = {value!r} is not allowed; choose one of: "
                    f"{', '.join(map(str, allowed))}."
                )
            return value
        try:
            converted = self._convert(value)
        except (TypeError, ValueError):
            raise error(f"{name} must be {self.phrase()}, not {value!r}.") from None
        if isinstance(converted, list | tuple):  # each item in range, else the whole phrase
            if any(self._broken_bound(v) is not None for v in converted):
                raise error(f"{name} must be {self.phrase()}, not {value!r}.")
            return converted
        broken = self._broken_bound(converted)
        if broken is not None:
            raise error(f"{name} must be {broken}, not {converted!r}.")
        return converted

    def _convert(self, value: Any) -> Any:
        """``value`` as ``kind`` (strictly, unless ``from_text``); TypeError/ValueError if not."""
        kind = self.kind
        if kind in (list, tuple):
            if self.from_text and isinstance(value, str):
                value = _split(value, self.item)
            elif self.item is not None and self.item is not str and _is_scalar(value, self.item):
                value = [value]  # "hidden = 64" means one layer of 64
            if not isinstance(value, list | tuple):
                raise TypeError
            out = [_scalar(v, self.item or str, self.from_text) for v in value]
            if (self.length is not None and len(out) != self.length) or (self.nonempty and not out):
                raise ValueError
            return kind(out)
        if kind is dict:
            if not isinstance(value, dict):
                raise TypeError
            return value
        return _scalar(value, kind, self.from_text)

    def _broken_bound(self, v: Any) -> str | None:
        """The phrase of the first bound ``v`` breaks, or None."""
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            return None
        if self.minimum is not None and v < self.minimum:
            return _lower_phrase(self.minimum, self.kind)
        if self.above is not None and v <= self.above:
            return f"greater than {self.above:g}"
        if self.maximum is not None and v > self.maximum:
            return f"at most {self.maximum:g}"
        if self.below is not None and v >= self.below:
            return f"less than {self.below:g}"
        return None

    def phrase(self) -> str:
        """What the value must be, in words: "a positive integer", "a finite number", …."""
        if self.kind in (list, tuple):
            item = self.item or str
            what = (
                "positive integers"
                if item is int and self.minimum == 1
                else (_KIND_WORDS[item] + "s")
            )
            count = {None: "a list of", 2: "exactly two"}.get(self.length, f"exactly {self.length}")
            text = f"{count} {what}"
        elif self.kind is int:
            text = _lower_phrase(self.minimum, int) if self.minimum in (0, 1) else "an integer"
        elif self.kind is float:
            text = "a finite number"
        else:
            text = _KIND_WORDS.get(self.kind, self.kind.__name__)
        text = " or ".join([*self.keywords, text])
        return text + (f" such as {self.example}" if self.example else "")


_KIND_WORDS = {
    bool: "true or false",
    int: "integer",
    float: "number",
    str: "text",
    dict: "a table of key = value",
}


def _lower_phrase(minimum: float | None, kind: type) -> str:
    if kind is int and minimum == 1:
        return "a positive integer"
    if kind is int and minimum == 0:
        return "a non-negative integer"
    if minimum == 0:
        return "0 or more"
    return f"at least {minimum:g}"


def _is_scalar(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, kind)


def _split(text: str, item: type | None) -> list[str]:
    """'a+b' (technique lists) or '64, 32' / '(64, 32)' (sizes) as items."""
    if item is int:
        return [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
    return [v.strip() for v in text.replace("|", "+").split("+") if v.strip()]


def _scalar(value: Any, kind: type, from_text: bool) -> Any:
    """One value as ``kind``. Strict: a bool is never a number, text is never a number."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if (
            from_text
            and isinstance(value, str)
            and value.strip().lower() in (TRUE_TEXT + FALSE_TEXT)
        ):
            return value.strip().lower() in TRUE_TEXT
        if from_text and isinstance(value, int):
            return bool(value)
        raise TypeError
    if kind is int:
        if from_text and isinstance(value, str):
            value = int(value.strip())
        if from_text and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError
        return int(value)
    if kind is float:
        if from_text and isinstance(value, str):
            value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError
        if not math.isfinite(value):
            raise ValueError
        return float(value)
    if kind is str:
        if from_text and not isinstance(value, str | dict | list | tuple) and value is not None:
            return str(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    if not isinstance(value, kind):
        raise TypeError
    return value


# ---------------------------------------------------------------------------------------------
# Dataclass fields described by a Spec (RunConfig).


def setting(default: Any, kind: type, help: str, **spec: Any) -> Any:
    """A dataclass field whose default, type, range and help are one ``Spec``.

    ``default`` may be a list or dict: each instance gets its own copy.
    """
    s = Spec(default, help, kind, **spec)
    meta = {"spec": s}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def spec_of(cls: type, name: str) -> Spec:
    """The Spec of dataclass field ``name`` of ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata["spec"]
    raise KeyError(name)
