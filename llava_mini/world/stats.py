"""Counting and picturing what a COCO-style dataset holds (notebook 01's figures).

    world_statistics(dataset)        Counters of categories, colours, shapes, sizes, objects per image, caption lengths
    plot_world_statistics(stats)     the six of them as one figure
    show_records(records)            a grid of images with their boxes drawn
    show_teacher_view(record)        the image beside the two texts a text-only teacher gets
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import Iterable

from llava_mini.world.coco import CocoDataset, ImageRecord
from llava_mini.world.symbolic import context_text, draw_boxes


def world_statistics(dataset: CocoDataset | Iterable[ImageRecord]) -> dict[str, Counter]:
    """Counts over a dataset. Colour, shape and size come from the shapes world's `attributes`;
    records without them (real photos) add only to the category, object and caption counts."""
    stats = {key: Counter() for key in ("category", "color", "shape", "size", "objects per image", "caption words")}
    for record in dataset:
        stats["objects per image"][len(record.objects)] += 1
        for caption in record.captions:
            stats["caption words"][len(caption.split())] += 1
        for obj in record.objects:
            stats["category"][obj.category] += 1
            for key in ("color", "shape", "size"):
                if obj.attributes and key in obj.attributes:
                    stats[key][obj.attributes[key]] += 1
    return stats


def _save(fig, path: str | Path | None) -> None:
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_world_statistics(stats: dict[str, Counter], path: str | Path | None = None, colors: dict | None = None):
    """Six panels: objects per image, shapes, colours (bars in their own colour), sizes,
    the colour x shape categories as a table of counts, and caption lengths."""
    import matplotlib.pyplot as plt
    import numpy as np

    from llava_mini.world.shapes import COLORS, SHAPES, SIZES

    colors = colors or COLORS
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    (ax_n, ax_shape, ax_color), (ax_size, ax_cat, ax_words) = axes

    def bars(ax, counter: Counter, title: str, order=None, bar_colors=None, xlabel=None):
        keys = list(order) if order is not None else sorted(counter)
        values = [counter.get(k, 0) for k in keys]
        ax.bar([str(k) for k in keys], values, color=bar_colors or "tab:gray")
        ax.set_title(title)
        ax.set_ylabel("count")
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.tick_params(axis="x", labelrotation=30 if len(keys) > 4 else 0)

    bars(ax_n, stats["objects per image"], "objects per image", xlabel="objects")
    ax_n.set_ylabel("images")
    bars(ax_shape, stats["shape"], "shapes", order=[s for s in SHAPES if s in stats["shape"]] or None)
    color_names = [c for c in colors if c in stats["color"]]
    bars(ax_color, stats["color"], "colours", order=color_names,
         bar_colors=[tuple(v / 255 for v in colors[c]) for c in color_names])
    bars(ax_size, stats["size"], "sizes (box side in pixels)", order=[s for s in SIZES if s in stats["size"]])
    ax_size.set_xticks(range(len(stats["size"])),
                       [f"{s}\n{SIZES[s]} px" for s in SIZES if s in stats["size"]], rotation=0)

    # Categories are colour + shape pairs: a table reads better than 30 bars.
    shapes = [s for s in SHAPES if s in stats["shape"]]
    table = np.array([[stats["category"].get(f"{c} {s}", 0) for s in shapes] for c in color_names])
    # vmin=0, so equal-looking cells mean equal counts (a scale starting at the minimum exaggerates noise).
    image = ax_cat.imshow(table, cmap="Blues", vmin=0)
    ax_cat.set_xticks(range(len(shapes)), shapes, rotation=30)
    ax_cat.set_yticks(range(len(color_names)), color_names)
    for (i, j), v in np.ndenumerate(table):
        ax_cat.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > table.max() * 0.5 else "black")
    ax_cat.set_title(f"categories ({(table > 0).sum()} colour x shape pairs)")
    fig.colorbar(image, ax=ax_cat, fraction=0.046, pad=0.04)

    words = stats["caption words"]
    ax_words.bar(list(words), list(words.values()), color="tab:gray")
    ax_words.set_title("caption length")
    ax_words.set_xlabel("words")
    ax_words.set_ylabel("captions")
    fig.tight_layout()
    _save(fig, path)
    return fig


def show_records(records: list[ImageRecord], ncols: int = 4, path: str | Path | None = None,
                 size: float = 3.0, titles: list[str] | None = None, fontsize: int = 7):
    """A grid of images with every object's box and label drawn."""
    import matplotlib.pyplot as plt

    nrows = (len(records) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (ax, record) in enumerate(zip(axes.flat, records)):
        title = titles[i] if titles else f"image {record.image_id}: {len(record.objects)} objects"
        draw_boxes(record, ax=ax, title=title, fontsize=fontsize)
    fig.tight_layout()
    _save(fig, path)
    return fig


def show_teacher_view(record: ImageRecord, path: str | Path | None = None, width: int = 48):
    """Left: what a person sees. Middle: the captions-only text (the paper's conversation prompts).
    Right: captions + boxes (detailed description and complex reasoning prompts)."""
    import matplotlib.pyplot as plt

    fig, (ax_img, ax_caps, ax_boxes) = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.3, 1.3]})
    draw_boxes(record, ax=ax_img, title="the pixels (boxes drawn for us)", fontsize=8)

    def text_panel(ax, text: str, title: str):
        wrapped = "\n".join(
            textwrap.fill(line, width, subsequent_indent="  ") if line else "" for line in text.split("\n"))
        ax.text(0.0, 1.0, wrapped, va="top", ha="left", family="monospace", fontsize=8.5, transform=ax.transAxes)
        ax.set_title(title)
        ax.set_axis_off()

    text_panel(ax_caps, context_text(record, boxes=False), "teacher's view: captions only")
    text_panel(ax_boxes, context_text(record, boxes=True), "teacher's view: captions + boxes")
    fig.tight_layout()
    _save(fig, path)
    return fig


def show_pixel_question(record: ImageRecord, region: tuple[int, int, int, int], question: str,
                        path: str | Path | None = None):
    """Answer a question from the pixels alone: outline `region` ([x, y, w, h] in pixels) on the
    image and show its mean colour as a swatch. Returns (figure, mean RGB as a tuple of ints)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    image = np.asarray(record.load_image())
    x, y, w, h = region
    mean_rgb = tuple(int(round(v)) for v in image[y:y + h, x:x + w].reshape(-1, 3).mean(axis=0))
    fig, (ax_img, ax_swatch) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax_img.imshow(image)
    ax_img.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="cyan", linewidth=2))
    ax_img.set_title(textwrap.fill(question, 60), fontsize=10)
    ax_img.set_axis_off()
    ax_swatch.imshow(np.full((8, 8, 3), mean_rgb, dtype=np.uint8))
    ax_swatch.set_title(f"mean colour inside the cyan box\nRGB {mean_rgb}", fontsize=10)
    ax_swatch.set_axis_off()
    fig.tight_layout()
    _save(fig, path)
    return fig, mean_rgb
