"""Notebook 05's figures: attention heatmaps over the image, grounding per layer, the masking test."""

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from PIL import Image

from llava_mini.attention.grounding import GroundingResult, square_box
from llava_mini.attention.masking import masking_example
from llava_mini.model import expand_to_square, mean_colour
from llava_mini.evaluate import conclusion


def model_view(image: Image.Image, image_processor) -> Image.Image:
    """The image as the model sees it, before normalisation: padded to a square with the mean colour."""
    return expand_to_square(image.convert("RGB"), mean_colour(image_processor))


def pixels_to_image(pixel_values: torch.Tensor, image_processor) -> Image.Image:
    """Undo the processor's normalisation: (3, H, W) -> a PIL image (to show what the model was given)."""
    mean = torch.tensor(image_processor.image_mean).reshape(3, 1, 1)
    std = torch.tensor(image_processor.image_std).reshape(3, 1, 1)
    array = ((pixel_values.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def overlay(ax, image: Image.Image, grid_map: torch.Tensor, bbox: Sequence[float] | None = None,
            original_size: tuple[int, int] | None = None, alpha: float = 0.55, cmap: str = "inferno",
            title: str | None = None, vmax: float | None = None, fontsize: int = 8, gray: bool = True):
    """A (rows, cols) map as a heatmap (0 to its max or ``vmax``; each patch flat, smoothing would invent detail) over a
    square image in grey (``gray=False``: colour); ``bbox`` in ``original_size`` pixels (default: ``image``'s)."""
    side = max(image.size)
    if gray and alpha > 0:
        # A grey image under the heat: the heat's colours cannot be mistaken for the objects' colours.
        ax.imshow(image.convert("L"), extent=(0, side, side, 0), interpolation="nearest", cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image, extent=(0, side, side, 0), interpolation="nearest")
    heat = grid_map.detach().float().numpy()
    ax.imshow(heat, extent=(0, side, side, 0), cmap=cmap, alpha=alpha, interpolation="nearest",
              vmin=0, vmax=vmax if vmax is not None else max(float(heat.max()), 1e-12))
    if bbox is not None:
        width, height = original_size or image.size
        scale = side / max(width, height)  # the square we draw may be resized from the padded original
        x, y, w, h = square_box(bbox, width, height)
        ax.add_patch(plt.Rectangle((x * scale, y * scale), w * scale, h * scale, fill=False, edgecolor="cyan", linewidth=1.5))
    ax.set(xticks=[], yticks=[])
    if title:
        ax.set_title(title, fontsize=fontsize)
    return ax


def _short(text: str, width: int = 34) -> str:
    """The first line of a model answer, cut to ``width`` characters, for figure titles."""
    line = text.strip().split("\n")[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _finish(fig, path, rect=(0, 0, 1, 1)):
    """Lay the figure out (``rect`` leaves a suptitle its own strip) and save it when ``path`` is given."""
    fig.tight_layout(rect=rect)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def plot_question_layers(results: Sequence[GroundingResult], image_processor, path=None, title: str | None = None,
                         answer_word: bool = False):
    """One row per question: the image and the object's box, then each layer's map (heads averaged) and score;
    over all answer tokens, or with ``answer_word`` the token that names the answer (" red") where there is one."""
    n_layers = results[0].attention.num_layers
    fig, axes = plt.subplots(len(results), n_layers + 1, figsize=(2.2 * (n_layers + 1), 2.9 * len(results)),
                             squeeze=False)
    for row, r in zip(axes, results):
        q, image = r.question, r.question.record.load_image()
        view = model_view(image, image_processor)
        mark = "right" if r.correct else f"wrong, expected {q.expected}"
        said = textwrap.wrap(f"-> {_short(conclusion(r.answer), 60)!r}", 32)  # the conclusion whole, on two lines
        overlay(row[0], view, torch.zeros(r.attention.grid), q.bbox, image.size, alpha=0, fontsize=8,
                title="\n".join([*textwrap.wrap(q.question, 32), *said, f"({mark})"]))
        token = r.answer_token if answer_word else None
        scores = r.by_layer if token is None else r.by_layer_answer_token
        which = "all answer tokens" if token is None else f"token {r.attention.answer_tokens[token].strip()!r}"
        for layer in range(n_layers):
            overlay(row[layer + 1], view, r.attention.grid_map(layer=layer, token=token), q.bbox, image.size,
                    title=f"layer {layer}: score {float(scores[layer]):.2f}" + (f"\n{which}" if answer_word and layer == 0 else ""),
                    fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path, (0, 0, 1, 0.97 if title else 1))


def plot_answer_layers(att, image: Image.Image, image_processor, path=None, show: bool = False):
    """One answer (an AnswerAttention): the image as the model sees it beside each layer's map of where the answer
    looked (heads and answer tokens averaged); ``show``: draw it now (inside a widget's callback, say)."""
    view = model_view(image, image_processor)
    fig, axes = plt.subplots(1, att.num_layers + 1, figsize=(2.2 * (att.num_layers + 1), 2.5), squeeze=False)
    overlay(axes[0, 0], view, torch.zeros(att.grid), alpha=0, title="the image", fontsize=9)
    for layer, ax in enumerate(axes[0, 1:]):
        overlay(ax, view, att.grid_map(layer=layer), title=f"layer {layer}", fontsize=9)
    fig = _finish(fig, path)
    if show:
        plt.show()
    return fig


def plot_token_layers(result: GroundingResult, image_processor, path=None, title: str | None = None,
                      max_tokens: int = 8):
    """Cell (l, t): where the query producing answer token t (the first ``max_tokens``) looked in layer l."""
    att, image = result.attention, result.question.record.load_image()
    view = model_view(image, image_processor)
    n_layers, n_tokens = att.num_layers, min(len(att.answer_ids), max_tokens)
    fig, axes = plt.subplots(n_layers, n_tokens, figsize=(1.7 * n_tokens, 1.8 * n_layers), squeeze=False)
    share = att.image_share.mean(1)  # (layers, tokens)
    for layer in range(n_layers):
        for t in range(n_tokens):
            overlay(axes[layer, t], view, att.grid_map(layer=layer, token=t), result.question.bbox, image.size, fontsize=7,
                    title=(f"{att.answer_tokens[t]!r}  " if layer == 0 else "") + f"img {float(share[layer, t]):.0%}")
        axes[layer, 0].set_ylabel(f"layer {layer}", fontsize=8)
    fig.suptitle(title or f"{result.question.question} -> {_short(conclusion(att.answer_text), 60)!r}", fontsize=9)
    return _finish(fig, path, (0, 0, 1, 0.96))


def plot_grounding(summaries: dict[str, dict], path=None):
    """Left: grounding per layer and model (error bars: s.e.), all answer tokens (solid) and the answer word
    (dashed). Right: each layer's share of attention on the image."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.5, 1]})
    for i, (name, s) in enumerate(summaries.items()):
        color, layers = f"C{i}", range(len(s["grounding_by_layer"]))
        left.errorbar(layers, s["grounding_by_layer"], yerr=s["grounding_sem"], marker="o", capsize=3, color=color,
                      label=f"{name}: all answer tokens (acc {s['accuracy']:.0%}, n={s['n_questions']})")
        if s.get("grounding_by_layer_answer_word"):
            left.errorbar(layers, s["grounding_by_layer_answer_word"], yerr=s["grounding_sem_answer_word"],
                          marker="s", capsize=3, color=color, linestyle="--", alpha=0.8,
                          label=f"{name}: the answer word only (n={s['n_answer_word']})")
        right.plot(layers, s["image_share_by_layer"], marker="o", label=name, color=color)
    left.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    left.set(xlabel="LM layer", ylabel="grounding score (x uniform)", title="Attention inside the object's box")
    right.set(xlabel="LM layer", ylabel="share of attention on image tokens", title="How much it looks at the image",
              ylim=(0, 1))
    for ax in (left, right):
        ax.set_xticks(list(range(len(next(iter(summaries.values()))["grounding_by_layer"]))))
        ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_grounding_by_correctness(summaries: dict[str, dict], path=None):
    """Grounding per layer, split into right and wrong answers, one panel per model."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(4.6 * len(summaries), 3.4), squeeze=False, sharey=True)
    for ax, (name, s) in zip(axes[0], summaries.items()):
        for label, style in (("correct", "-o"), ("wrong", "--s")):
            values = s.get(f"grounding_by_layer_{label}")
            if values:
                ax.plot(range(len(values)), values, style, label=f"{label} (n={s[f'n_{label}']})")
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.set(title=name, xlabel="LM layer")
        ax.set_xticks(list(range(len(s["grounding_by_layer"]))))
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("grounding score")
    return _finish(fig, path)


def plot_masking(report: dict, path=None, title: str | None = None):
    """Left: accuracy with nothing, the box, the top-k attended or k random patches masked. Right: answers changed."""
    conditions = [("object's box\n(%.0f patches)" % report["box"]["patches"], report["box"], "tab:purple")]
    for key, entry in report.items():
        if key.startswith("k="):
            conditions += [(f"top {key[2:]}\nattended", entry["top_attended"], "tab:red"),
                           (f"{key[2:]}\nrandom", entry["random"], "tab:blue")]
    labels, entries, colors = (list(column) for column in zip(*conditions))
    fig, (left, right) = plt.subplots(1, 2, figsize=(2.2 * len(conditions) + 2, 3.4))
    for ax, names, values, colours, ylabel, panel in (
        (left, ["nothing"] + labels, [report["unmasked_accuracy"]] + [e["accuracy"] for e in entries],
         ["tab:gray"] + colors, "accuracy", "accuracy after masking"),
        (right, labels, [e["changed"] for e in entries], colors, "answers that changed", "answers that changed"),
    ):
        bars = ax.bar(range(len(names)), values, color=colours)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set(ylabel=ylabel, ylim=(0, 1))
        ax.set_title(panel, fontsize=9)
    fig.suptitle(title or f"Masking patches (n={report['n_questions']})", fontsize=10)
    return _finish(fig, path)


def plot_masking_example(model, tokenizer, image_processor, result: GroundingResult, k: int = 4, seed: int = 0,
                         path=None, system_prompt: str | None = None, max_new_tokens: int = 48):
    """The attention map, then ``masking_example``'s three versions, each titled with the model's answer."""
    versions = masking_example(model, tokenizer, image_processor, result, k, seed, system_prompt, max_new_tokens)
    fig, axes = plt.subplots(1, len(versions) + 1, figsize=(2.9 * (len(versions) + 1), 3.1))
    record = result.question.record
    overlay(axes[0], pixels_to_image(versions["as given"][0], image_processor), result.attention.grid_map(),
            result.question.bbox, (record.width, record.height), title="attention (all layers)", fontsize=8)
    for ax, (name, (pixel_values, answer)) in zip(axes[1:], versions.items()):
        ax.imshow(pixels_to_image(pixel_values, image_processor), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_title(f"{name}\n-> {_short(conclusion(answer), 28)!r}", fontsize=8)  # the verdict, not its steps
    fig.suptitle(f"{result.question.question}  (expected: {result.question.expected})", fontsize=9)
    return _finish(fig, path)
