"""Notebook 01's figures (matplotlib, imported on first use; `path` saves a figure too)."""

import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

from llava_mini.world.coco import ImageRecord
from llava_mini.world.shapes import COLORS, SHAPES, SIZES
from llava_mini.world.symbolic import context_text


def _subplots(*args, **kwargs):
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _done(fig, path: str | Path | None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def draw_boxes(record: ImageRecord, image=None, ax=None, title: str | None = None, fontsize: int = 8):
    """Show the image with each object's box and label; returns the matplotlib axes."""
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    ax = ax if ax is not None else _subplots(figsize=(4, 4))[1]
    image = image if image is not None else record.load_image()
    ax.imshow(image, interpolation="nearest" if max(record.width, record.height) <= 128 else "antialiased")
    for obj in record.objects:
        x, y, w, h = obj.bbox
        # [x, y, w, h] covers pixels x .. x + w - 1, whose outer edges lie at x - 0.5 and x + w - 0.5. Black
        # dashes with a white halo, never a colour: a coloured box could be read as an object's own colour.
        halo = [patheffects.Stroke(linewidth=3, foreground="white"), patheffects.Normal()]
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="black", linestyle=(0, (3, 2)),
                               linewidth=1.2, path_effects=halo))
        ax.text(x - 0.5, y - 1, obj.category, color="black", fontsize=fontsize, va="bottom",
                bbox=dict(facecolor="white", edgecolor="black", linewidth=0.5, pad=1, alpha=0.9))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    return ax


def show_records(records: list[ImageRecord], ncols: int = 4, path: str | Path | None = None,
                 size: float = 3.0, titles: list[str] | None = None, fontsize: int = 7):
    """A grid of images with every object's box and label drawn."""
    nrows = (len(records) + ncols - 1) // ncols
    fig, axes = _subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()  # the grid's empty cells too
        if i < len(records):
            title = titles[i] if titles else f"image {records[i].image_id}: {len(records[i].objects)} objects"
            draw_boxes(records[i], ax=ax, title=title, fontsize=fontsize)
    return _done(fig, path)


def plot_world_statistics(stats: dict[str, Counter], path: str | Path | None = None, colors: dict | None = None):
    """Six panels: objects per image, shapes, colours (in colour), sizes, categories (a table), caption lengths."""
    colors = colors or COLORS
    fig, ((ax_n, ax_shape, ax_color), (ax_size, ax_cat, ax_words)) = _subplots(2, 3, figsize=(13, 7))

    def bars(ax, counter: Counter, title: str, keys, bar_colors="tab:gray", xlabel=None, ylabel="count"):
        ax.bar([str(k) for k in keys], [counter.get(k, 0) for k in keys], color=bar_colors)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.tick_params(axis="x", labelrotation=30 if len(keys) > 4 else 0)

    n_objects, words = stats["objects per image"], stats["caption words"]
    bars(ax_n, n_objects, "objects per image", sorted(n_objects), xlabel="objects", ylabel="images")
    shapes = [s for s in SHAPES if s in stats["shape"]]
    bars(ax_shape, stats["shape"], "shapes", shapes or sorted(stats["shape"]))
    color_names = [c for c in colors if c in stats["color"]]
    bars(ax_color, stats["color"], "colours", color_names, [tuple(v / 255 for v in colors[c]) for c in color_names])
    sizes = [s for s in SIZES if s in stats["size"]]
    bars(ax_size, stats["size"], "sizes (box side in pixels)", sizes)
    ax_size.set_xticks(range(len(sizes)), [f"{s}\n{SIZES[s]} px" for s in sizes], rotation=0)
    # Categories are colour + shape pairs: a table reads better than 30 bars. vmin=0, so equal-looking
    # cells mean equal counts (a scale starting at the minimum exaggerates noise).
    table = np.array([[stats["category"].get(f"{c} {s}", 0) for s in shapes] for c in color_names])
    fig.colorbar(ax_cat.imshow(table, cmap="Blues", vmin=0), ax=ax_cat, fraction=0.046, pad=0.04)
    ax_cat.set_xticks(range(len(shapes)), shapes, rotation=30)
    ax_cat.set_yticks(range(len(color_names)), color_names)
    for (i, j), v in np.ndenumerate(table):
        ax_cat.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if v > table.max() / 2 else "black")
    ax_cat.set_title(f"categories ({(table > 0).sum()} colour x shape pairs)")
    ax_words.bar(list(words), list(words.values()), color="tab:gray")
    ax_words.set(title="caption length", xlabel="words", ylabel="captions")
    return _done(fig, path)


def show_teacher_view(record: ImageRecord, path: str | Path | None = None, width: int = 48):
    """What a person sees beside the teacher's two views: captions only, and captions + boxes (`context_text`)."""
    fig, (ax_img, *text_axes) = _subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.3, 1.3]})
    draw_boxes(record, ax=ax_img, title="the pixels (boxes drawn for us)", fontsize=8)
    for ax, boxes in zip(text_axes, (False, True)):
        text = "\n".join(textwrap.fill(line, width, subsequent_indent="  ") if line else ""
                         for line in context_text(record, boxes=boxes).split("\n"))
        ax.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=8.5, transform=ax.transAxes)
        ax.set_title("teacher's view: captions + boxes" if boxes else "teacher's view: captions only")
        ax.set_axis_off()
    return _done(fig, path)


def show_pixel_question(record: ImageRecord, region: tuple[int, int, int, int], question: str,
                        path: str | Path | None = None):
    """Answer a question from the pixels alone: outline `region` ([x, y, w, h] in pixels) on the
    image and show its mean colour as a swatch. Returns (figure, mean RGB as a tuple of ints)."""
    from matplotlib.patches import Rectangle

    image = np.asarray(record.load_image())
    x, y, w, h = region
    mean_rgb = tuple(int(round(v)) for v in image[y:y + h, x:x + w].reshape(-1, 3).mean(axis=0))
    fig, (ax_img, ax_swatch) = _subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax_img.imshow(image)
    ax_img.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="cyan", linewidth=2))
    ax_img.set_title(textwrap.fill(question, 60), fontsize=10)
    ax_swatch.imshow(np.full((8, 8, 3), mean_rgb, dtype=np.uint8))
    ax_swatch.set_title(f"mean colour inside the cyan box\nRGB {mean_rgb}", fontsize=10)
    for ax in (ax_img, ax_swatch):
        ax.set_axis_off()
    return _done(fig, path), mean_rgb
