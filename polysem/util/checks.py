"""The checks of every argument of the public API, one per kind of value (README "Arguments").

A library function calls these first, before it reads or writes anything: a wrong type is an
`ArgumentError` (a PolysemError and a TypeError) naming the parameter and the type expected, a value
outside its range an `ArgumentRange` (a PolysemError and a ValueError) naming the range. The CLI
passes its options through unchanged, so both faces give the same line (the CLI shows the flag).
Booleans are never numbers, floats never counts, and a string is never split into class ids.
"""

from __future__ import annotations

import numbers
import operator
import os
from collections.abc import Iterable, Mapping
from typing import Any, cast

from polysem.errors import ArgumentError, ArgumentRange

__all__ = ["BATCH_MAX", "COUNT_MAX", "check_bool", "check_choice", "check_class_list", "check_class_lists", "check_int",
           "check_params", "check_path", "check_real", "check_text"]

COUNT_MAX = 2**63 - 1  # a count, limit, id or seed: at most a 63-bit integer (DuckDB's BIGINT)
BATCH_MAX = 65536  # images in one forward and backward pass


def _number(value: int) -> str:
    return "2**63 - 1" if value == COUNT_MAX else str(value)


def _got(value: Any) -> str:
    """What was given, short: its type and its value."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"int of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    text = " ".join(repr(value).split())  # one line, whatever the repr (a Compose's or a module's has several)
    text = text if len(text) <= 60 else text[:57] + "..."
    return "None" if value is None else f"{type(value).__name__} {text}"


def _value(value: Any) -> str:
    """A value out of range as given, or short (`_got`) when it is long."""
    if isinstance(value, int) and abs(value) > 10**30:
        return _got(value)
    text = str(value)
    return text if len(text) <= 40 else _got(value)


def _index(value: Any) -> int | None:
    """The value as an int when it is a whole number (int, numpy integer), else None (bool, float, str)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:  # a float, text, a numpy bool
        return None


def check_int(name: str, value: Any, low: int, high: int = COUNT_MAX, *, none: bool = False,
              hint: str = "") -> Any:
    """A whole number from `low` to `high` (an int, or a numpy integer, never a bool or a float);
    returns it as an int. `none`: None is allowed (and returned). `hint` ends the range message."""
    if value is None and none:
        return None
    number = _index(value)
    if number is None:
        expected = "a whole number (int)" + (" or None" if none else "")
        raise ArgumentError(f"`{name}` must be {expected}, got {_got(value)}")
    if not low <= number <= high:
        raise ArgumentRange(f"`{name}` must be from {_number(low)} to {_number(high)}, got {_value(number)}{hint}")
    return number


def check_real(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
               none: bool = False, hint: str = "") -> Any:
    """A number (int or float, never a bool or text) in the interval from `low` to `high`, each end open
    or closed as asked; NaN is outside every interval. Returns it as a float."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        expected = "a number (int or float)" + (" or None" if none else "")
        raise ArgumentError(f"`{name}` must be {expected}, got {_got(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = float("inf") if cast(float, value) > 0 else float("-inf")
    above = low < number if low_open else low <= number
    below = number < high if high_open else number <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ArgumentRange(f"`{name}` must be in {interval}, got {_value(value)}{hint}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """True or False: not 0/1, not a string."""
    if not isinstance(value, bool):
        raise ArgumentError(f"`{name}` must be True or False (bool), got {_got(value)}")
    return value


def check_text(name: str, value: Any, *, none: bool = False) -> Any:
    """A str (None too with `none`)."""
    if value is None and none:
        return None
    if not isinstance(value, str):
        expected = "text (str)" + (" or None" if none else "")
        raise ArgumentError(f"`{name}` must be {expected}, got {_got(value)}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...], *, none: bool = False) -> Any:
    """One of `choices` (text; None too with `none`): a str that is none of them is out of range."""
    check_text(name, value, none=none)
    if value is not None and value not in choices:
        raise ArgumentRange(f"`{name}` must be {' or '.join(choices)}, got {_got(value)}")
    return value


def check_path(name: str, value: Any, *, none: bool = False) -> Any:
    """A path: a str or an os.PathLike such as pathlib.Path (None too with `none`). Whether it may be
    empty, exist or be written is the caller's next check."""
    if value is None and none:
        return None
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        expected = "a path (str or pathlib.Path)" + (" or None" if none else "")
        raise ArgumentError(f"`{name}` must be {expected}, got {_got(value)}")
    return value


def _is_list(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray, Mapping))


def check_class_list(name: str, value: Any, *, names: bool = False, none: bool = False) -> Any:
    """A list (or tuple, or other iterable that is not text) of class ids, each a whole number from 0 to
    2**63 - 1, or with `names` a class id or a folder or class name (str). A string is never split
    into ids: "12" is refused here, ["12"] is class 12 (or the class named "12"). Returns a list."""
    if value is None and none:
        return None
    what = "class ids or names (int or str)" if names else "class ids (int)"
    if not _is_list(value):
        raise ArgumentError(f"`{name}` must be a list of {what}, got {_got(value)}")
    items = list(value)
    for item in items:
        if names and isinstance(item, str):
            continue
        if _index(item) is None:
            raise ArgumentError(f"`{name}` must be a list of {what}, got {_got(item)} in it")
        check_int(name, item, 0, COUNT_MAX, hint=" (a class id)")
    return [item if isinstance(item, str) else _index(item) for item in items]


def check_class_lists(name: str, value: Any, *, names: bool = True) -> list[list]:
    """A list of concepts, each a list of classes (`check_class_list`)."""
    if not _is_list(value):
        raise ArgumentError(f"`{name}` must be a list of concepts, each a list of class ids or names, "
                            f"got {_got(value)}")
    concepts = list(value)
    if any(not _is_list(concept) for concept in concepts):
        bad = next(concept for concept in concepts if not _is_list(concept))
        raise ArgumentError(f"`{name}` must be a list of concepts, each a list of class ids or names, "
                            f"got {_got(bad)} in it")
    return [check_class_list(name, concept, names=names) for concept in concepts]


def check_params(name: str, value: Any) -> Any:
    """Query parameters: a list or tuple (bound to ?), a dict (bound to $name), or None."""
    if value is not None and not isinstance(value, (list, tuple, dict)):
        raise ArgumentError(f"`{name}` must be a list (for ?), a dict (for $name) or None, got {_got(value)}")
    return value
