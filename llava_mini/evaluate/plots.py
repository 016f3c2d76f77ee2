"""The comparison figure of notebook 04: accuracy per question kind, and the description metrics."""

from pathlib import Path

from llava_mini.evaluate.questions import KINDS
from llava_mini.evaluate.report import save_results


def _bars(ax, rows: dict[str, list], labels: list[str], blind_name: str, title: str) -> None:
    """Grouped bars: one group per label, one bar per model; values are fractions (None: no bar)."""
    import numpy as np

    width = 0.8 / max(1, len(rows))
    x = np.arange(len(labels))
    for k, (name, values) in enumerate(rows.items()):
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, [np.nan if v is None else 100 * v for v in values], width,
               label=name, hatch="//" if name == blind_name else None, alpha=0.9)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 112)  # headroom for the legend above 100 %
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def plot_comparison(results: dict[str, dict], path: str | Path | None = None, blind_name: str = "blind"):
    """Accuracy per question kind (and macro) for each model, and the description metrics when present.
    Saved to ``path`` (PNG) with the numbers beside it as JSON (same name, ``.json``). Returns the figure."""
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if any(k in r["accuracy"] for r in results.values())]
    with_desc = any(r.get("description") for r in results.values())
    fig, axes = plt.subplots(1, 2 if with_desc else 1, figsize=(13 if with_desc else 9, 3.8),
                             gridspec_kw={"width_ratios": [3, 1.2]} if with_desc else None, squeeze=False)
    accuracy = {name: [r["accuracy"].get(k) for k in kinds] + [r.get("macro")] for name, r in results.items()}
    _bars(axes[0, 0], accuracy, kinds + ["macro"], blind_name, "held-out questions by kind")
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[0, 0].legend(fontsize=8, ncol=min(4, len(results)), loc="upper left")
    if with_desc:
        metrics = {name: [(r.get("description") or {}).get(m) for m in ("recall", "chair_i", "chair_s")]
                   for name, r in results.items()}
        _bars(axes[0, 1], metrics, ["recall ↑", "CHAIR_i ↓", "CHAIR_s ↓"], blind_name, "detailed descriptions")
    fig.tight_layout()
    if path is not None:
        save_results(results, Path(path).with_suffix(".json"), blind_name)  # (makes the folder too)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
