"""Figures of a training run (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_loss(history: list[dict], path: str | Path | None = None, title: str | None = None, ax=None):
    """Training loss per step (raw and smoothed) with the learning rate on a second axis; saved to ``path``."""
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    losses = [row["loss"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=1, label="loss")
    window = max(1, len(losses) // 10)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=2, label=f"mean of {window}")
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title=title or "training loss")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [row["lr"] for row in history], color="tab:gray", lw=1, ls="--")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    lr_ax.tick_params(axis="y", colors="tab:gray")
    ax.legend(loc="upper right")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
