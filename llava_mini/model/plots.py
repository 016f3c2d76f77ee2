"""A picture of one training sequence: which tokens are image, prompt (not learned) and answer (learned)."""

from __future__ import annotations

from typing import Sequence

import torch

from llava_mini.model.conversation import IGNORE_INDEX


def draw_token_layout(input_ids: Sequence[int], labels: Sequence[int], tokenizer, image_token_id: int,
                      width: int = 32, ax=None, title: str | None = None):
    """Draw a sequence as a grid of cells, one per token: image tokens, prompt text (-100, not learned)
    and answer tokens (labelled, learned). input_ids, labels: (T,). Returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ids, labs = [int(t) for t in input_ids], [int(t) for t in labels]
    kind = [2 if lab != IGNORE_INDEX else 1 if tok == image_token_id else 0 for tok, lab in zip(ids, labs)]
    rows = -(-len(ids) // width)
    grid = torch.full((rows * width,), -1.0)
    grid[: len(kind)] = torch.tensor(kind, dtype=torch.float)
    if ax is None:
        _, ax = plt.subplots(figsize=(width * 0.42, rows * 0.42 + 0.8))
    cmap = ListedColormap(["white", "#dddddd", "#9ecae1", "#fdae6b"])
    ax.imshow(grid.view(rows, width) + 1, cmap=cmap, vmin=0, vmax=3)
    for t, tok in enumerate(ids):
        text = "img" if tok == image_token_id else tokenizer.decode([tok]).replace("\n", "\\n").strip() or "␣"
        ax.text(t % width, t // width, text[:5], ha="center", va="center", fontsize=5.5)
    ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#dddddd", "#9ecae1", "#fdae6b")]
    ax.legend(handles, ["text, label -100", "image token, label -100", "answer, learned"],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
