"""Text shown to a person: control and bidirectional characters escaped, so a name cannot hide,
reorder or restyle what follows it (U+202E would reverse the rest of a table row, \\x1b starts a
terminal escape sequence, \\r and \\n break a row)."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["escape_controls"]

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# quick pre-check: the C0/C1 controls and every character outside ASCII (checked by category below)
_SUSPECT = re.compile(r"[\x00-\x1f\x7f-\U0010ffff]")


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """`text` with every control (Cc), format (Cf: bidirectional marks and overrides, zero-width
    characters) and line or paragraph separator (Zl, Zp) character written as an escape: \\t, \\n,
    \\r, \\x1b, \\u202e. Other text, accents and scripts included, is unchanged."""
    if not _SUSPECT.search(text):
        return text
    return "".join(_escaped(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
