"""The symbolic view of an image: what the paper's text-only teacher (GPT-4) read instead of pixels.

    A red circle to the left of a small blue square.        <- the captions, one per line
    ...
                                                            <- a blank line
    red circle: [0.125, 0.250, 0.469, 0.594]                <- one line per object: x1, y1, x2, y2,
    blue square: [0.625, 0.313, 0.875, 0.563]                  normalised by width/height, 3 decimals
"""

from __future__ import annotations

from llava_mini.world.coco import ImageRecord, ObjectAnnotation


def normalized_box(obj: ObjectAnnotation, width: int, height: int) -> tuple[float, float, float, float]:
    """Corners x1, y1, x2, y2 divided by the image's width and height and clipped to 0..1."""
    x1, y1, x2, y2 = obj.corners
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return clip(x1 / width), clip(y1 / height), clip(x2 / width), clip(y2 / height)


def box_line(obj: ObjectAnnotation, width: int, height: int) -> str:
    return f"{obj.category}: [{', '.join(f'{v:.3f}' for v in normalized_box(obj, width, height))}]"


def context_text(record: ImageRecord, boxes: bool = True) -> str:
    """The teacher's view of one image: captions, then (if `boxes`) a blank line and one box per line.

    The paper used captions only for conversations and captions + boxes for detailed descriptions and
    complex reasoning.
    """
    lines = list(record.captions)
    if boxes and record.objects:
        lines.append("")
        lines.extend(box_line(o, record.width, record.height) for o in record.objects)
    return "\n".join(lines)


def draw_boxes(record: ImageRecord, image=None, ax=None, title: str | None = None, fontsize: int = 8):
    """Show the image with each object's box and label; returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = image if image is not None else record.load_image()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, interpolation="nearest" if max(record.width, record.height) <= 128 else "antialiased")
    palette = plt.get_cmap("tab10")
    for i, obj in enumerate(record.objects):
        x, y, w, h = obj.bbox
        color = palette(i % 10)
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=color, linewidth=2))
        ax.text(x - 0.5, y - 1, obj.category, color="white", fontsize=fontsize, va="bottom",
                bbox=dict(facecolor=color, edgecolor="none", pad=1, alpha=0.85))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    return ax
