"""Text as the library's arguments: the one place a comma list, a list of seeds or "auto" is read from text
(the command line's options, a notebook's config), so every face refuses bad text with the same message.

A message names the parameter in backticks, `seeds`; the command line shows the flag that sets it (--seeds).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from polysem.errors import ArgumentRange

__all__ = ["rho_value", "split_values", "whole_numbers"]

_WHOLE = re.compile(r"-?[0-9]+")


def whole_numbers(name: str, text: str | None, what: str = "whole numbers", example: str = "0,1,2") -> list[int] | None:
    """Whole numbers separated by commas ("0, 5,17"), in order; None for None. Empty parts are skipped; a part
    that is not a whole number is refused naming `name`. The range is the caller's to check.

    Example:
        >>> whole_numbers("seeds", "0,1, 2")
        [0, 1, 2]
    """
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(_WHOLE.fullmatch(part) for part in parts):
        raise ArgumentRange(f"bad `{name}` '{text}': give {what} separated by commas, e.g. {example}")
    return [int(part) for part in parts]


def rho_value(text: str) -> str | float:
    """The source threshold as `disentangle` takes it: "auto" or a number (its range is checked there).

    Example:
        >>> rho_value("auto"), rho_value("0.35")
        ('auto', 0.35)
    """
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise ArgumentRange(f"bad `rho` '{text}': use auto or a number in (0, 1]") from None


def split_values(values: Iterable[str] | None) -> list[str]:
    """Values given one by one or separated by commas, as one list: ["530", "531,532"] -> ["530", "531", "532"].

    Example:
        >>> split_values(["tabby", "tiger cat,Persian cat"])
        ['tabby', 'tiger cat', 'Persian cat']
    """
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
