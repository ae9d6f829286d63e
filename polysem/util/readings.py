"""How to read polysem's numbers where their range surprises: one wording for the terminal, JSON and the report."""

from __future__ import annotations

__all__ = ["FRACTIONS_NOTE", "SELECTION_TEXT", "UNBOUNDED", "fractions_outside", "selectivity_reading"]

# the evaluation's fractions are legal outside [0, 1]: the merge is c = sum_j c'_j - (k - 1) r
FRACTIONS_NOTE = ("fractions outside [0, 1] are legal: the original channel is c'1 + ... + c'k - (k - 1) r, so a "
                  "new unit can carry more than the whole activation (> 1) or work against it (< 0)")
# how an evaluation selected its val images (evaluations.selection; docs/method.md section 7)
SELECTION_TEXT = {
    "ineq2": "Ineq. 2 (the paper's: spatial sums clamped, as screening)",
    "authors": "the authors' get_results.py (attribution clamped per position before the spatial sum)",
}
UNBOUNDED = "unbounded: the other new units' activation on this image is <= 0"


def fractions_outside(rows) -> bool:
    """True when any fraction of these rows (lists of fractions, None allowed) lies outside [0, 1]."""
    return any(f is not None and not 0 <= f <= 1 for row in rows for f in (row or []))


def selectivity_reading(unit: str, selectivity: float | None) -> str:
    """What a unit's selectivity says: a ratio, unbounded (no positive denominator), or not defined."""
    if not unit.startswith("c"):
        return "not defined for the original channel and r"
    if selectivity is None:
        return UNBOUNDED
    return "act of this unit over the largest act of the other new units on its image"
