"""How two objects relate, and how to name one object so that it is the only one meant: one rule each, shared
by the world's captions, the symbolic teacher and the held-out questions. Positions are box centres in
fractions of the image (0..1, y down), as the teacher reads them. A relation is stated only when clear-cut:
``MIN_OFFSET`` apart along an axis that dominates the other by ``MARGIN``, so rounding can never flip it."""

from typing import Sequence

MIN_OFFSET = 0.11
MARGIN = 0.03
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


def relation(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """The clear relation of the object centred at ``a`` to the one at ``b`` ("to the left of", ...), or None."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) >= abs(dy) + MARGIN and abs(dx) >= MIN_OFFSET:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) >= abs(dx) + MARGIN and abs(dy) >= MIN_OFFSET:
        return "above" if dy > 0 else "below"
    return None


def unique_name(objects: Sequence, i: int) -> str | None:
    """The shortest name that picks out object i alone: 'red circle', else 'small red circle', else None.
    Objects need ``.category`` ('red circle') and ``.size`` ('small', or None when unknown)."""
    obj = objects[i]
    if sum(o.category == obj.category for o in objects) == 1:
        return obj.category
    if obj.size and sum((o.size, o.category) == (obj.size, obj.category) for o in objects) == 1:
        return f"{obj.size} {obj.category}"
    return None
