"""The symbolic view of an image: what the paper's text-only teacher (GPT-4) read instead of pixels.

    A red circle to the left of a small blue square.        <- the captions, one per line
    ...
                                                            <- a blank line
    red circle: [0.125, 0.250, 0.469, 0.594]                <- one line per object: x1, y1, x2, y2,
    blue square: [0.625, 0.313, 0.875, 0.563]                  normalised by width/height, 3 decimals
"""

from llava_mini.world.coco import ImageRecord, ObjectAnnotation


def normalized_box(obj: ObjectAnnotation, width: int, height: int) -> tuple[float, float, float, float]:
    """Corners x1, y1, x2, y2 divided by the image's width and height and clipped to 0..1."""
    return tuple(min(1.0, max(0.0, v / side)) for v, side in zip(obj.corners, (width, height, width, height)))


def box_text(label: str, box: tuple[float, float, float, float]) -> str:
    """'red circle: [0.125, 0.250, 0.469, 0.594]' from a normalised box (the teacher's answers copy lines in this form)."""
    return f"{label}: [{', '.join(f'{v:.3f}' for v in box)}]"


def box_line(obj: ObjectAnnotation, width: int, height: int) -> str:
    return box_text(obj.category, normalized_box(obj, width, height))


def context_text(record: ImageRecord, boxes: bool = True) -> str:
    """The view above; without `boxes`, captions only (the paper's conversations used that, its
    descriptions and complex reasoning captions + boxes)."""
    lines = list(record.captions)
    if boxes and record.objects:
        lines.append("")
        lines.extend(box_line(o, record.width, record.height) for o in record.objects)
    return "\n".join(lines)
