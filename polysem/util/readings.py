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


CLEAN_SHARE = 0.9  # a unit whose top images are at least this share its concept's "looks clean" by activation
MIXED_SHARE = 0.5  # and below this share, mixed


def views_disagree(unit: str, verdict: dict, own_top: int, n_top: int, settings: dict, split: str) -> str | None:
    """Why the attribution verdict of a new unit (`polysem verify`: `verdict` has serves, monosemantic, reason)
    and the activation view (`own_top` of its `n_top` most activating `split` images are of its concept)
    disagree, with both numbers; None when they agree. `settings`: the verification's tau and p."""
    if n_top == 0:
        return None
    share = own_top / n_top
    ok = bool(verdict["serves"] and verdict["monosemantic"])
    views = (f"The two views measure different things: verify asks, over every train image of the run's "
             f"classes, whether {unit} carries at least tau {settings['tau']} of an image's positive attribution "
             f"to its class's logit (Ineq. 2) in at least p {settings['p']} of a class's images; the top images "
             f"rank the {split} images by {unit}'s activation alone, which does not say how much a logit depends "
             "on it.")
    if not ok and share >= CLEAN_SHARE:
        return (f"{unit}: not resolved by attribution ({verdict['reason']}), while {own_top} of its {n_top} most "
                f"activating {split} images ({share:.0%}) are of its concept. {views} A unit can fire most for "
                "its concept and still carry too small a share of its images' attribution, or carry some of "
                "another concept's.")
    if ok and share < MIXED_SHARE:
        return (f"{unit}: serves its concept only by attribution ({verdict['reason']}), while only {own_top} of its "
                f"{n_top} most activating {split} images ({share:.0%}) are of its concept. {views} Its top images "
                "come from classes whose logits verify found it irrelevant for.")
    return None

