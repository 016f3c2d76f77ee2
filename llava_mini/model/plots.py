"""A picture of one training sequence: which tokens are image, prompt (not learned) and answer (learned)."""

from __future__ import annotations

from typing import Sequence

import torch

from llava_mini.model.conversation import IGNORE_INDEX


def draw_token_layout(input_ids: Sequence[int], labels: Sequence[int], tokenizer, image_token_id: int,
                      width: int = 16, ax=None, title: str | None = None, fontsize: float = 7):
    """Draw a sequence as a grid of cells, one per token and ``width`` to a row: image tokens, prompt text
    (-100, not learned) and answer tokens (labelled, learned), each text token written whole. input_ids,
    labels: (T,). Without ``ax`` the figure is sized so that the longest token fits its cell. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ids, labs = [int(t) for t in input_ids], [int(t) for t in labels]
    kind = [2 if lab != IGNORE_INDEX else 1 if tok == image_token_id else 0 for tok, lab in zip(ids, labs)]
    texts = ["img" if tok == image_token_id else tokenizer.decode([tok]).replace("\n", "\\n").strip() or "␣"
             for tok in ids]
    rows = -(-len(ids) // width)
    grid = torch.full((rows * width,), -1.0)
    grid[: len(kind)] = torch.tensor(kind, dtype=torch.float)
    if ax is None:
        # a capital at `fontsize` points is about 0.7 x fontsize / 72 inches wide; a margin on each side
        cell = max(0.45, 0.7 * fontsize / 72 * max(map(len, texts)) + 0.2)
        _, ax = plt.subplots(figsize=(width * cell, rows * 0.32 + 0.9))
    cmap = ListedColormap(["white", "#dddddd", "#9ecae1", "#fdae6b"])
    ax.imshow(grid.view(rows, width) + 1, cmap=cmap, vmin=0, vmax=3, aspect="auto")
    for t, text in enumerate(texts):
        ax.text(t % width, t // width, text, ha="center", va="center", fontsize=fontsize)
    ax.set_xticks([i - 0.5 for i in range(width + 1)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(rows + 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="both", length=0)
    ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#dddddd", "#9ecae1", "#fdae6b")]
    ax.legend(handles, ["text, label -100", "image token, label -100", "answer, learned"],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
