"""Looking at generated instruction data: its statistics, and records beside their images."""

from collections import Counter
from itertools import groupby
from pathlib import Path

from llava_mini.teacher.records import IMAGE_TOKEN, record_type
from llava_mini.teacher.runner import question_kind


def plot_generation_stats(records: list[dict], path: str | Path | None = None):
    """Four panels: records per type, question kinds in conversations, question/answer pairs per
    conversation, words per answer by type. Returns the figure (saved to `path` if given)."""
    import matplotlib.pyplot as plt

    by_type = {t: list(rs) for t, rs in groupby(sorted(records, key=record_type), key=record_type)}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    types, conversations = list(by_type), by_type.get("conversation", [])
    axes[0].bar(types, [len(by_type[t]) for t in types], color=[f"C{k}" for k in range(len(types))])
    axes[0].set_title("records per response type")
    kinds = Counter(question_kind(turn["value"]) for r in conversations for turn in r["conversations"][::2])
    kinds = kinds.most_common()[::-1]  # the most common at the top
    axes[1].barh([k for k, _ in kinds], [n for _, n in kinds], color="tab:blue")
    axes[1].set_title("conversation questions by kind")
    pairs = Counter(len(r["conversations"]) // 2 for r in conversations)
    axes[2].bar(sorted(pairs), [pairs[k] for k in sorted(pairs)], color="tab:blue")
    axes[2].set(title="question/answer pairs per conversation", xlabel="pairs")
    for t in types:
        words = [len(turn["value"].split()) for r in by_type[t] for turn in r["conversations"][1::2]]
        axes[3].hist(words, bins=range(0, max(words) + 5, 3), alpha=0.6, label=t)
    axes[3].set(title="words per answer", xlabel="words")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def show_generated(records: list[dict], image_dir: str | Path, path: str | Path | None = None, width: int = 62):
    """Each record's image beside its conversation (one row per record). Returns the figure."""
    import textwrap

    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(records), 2, figsize=(12, 2.9 * len(records)),
                             gridspec_kw={"width_ratios": [1, 3.2]}, squeeze=False)
    for (ax_img, ax_txt), rec in zip(axes, records):
        ax_img.imshow(Image.open(Path(image_dir) / rec["image"]).convert("RGB"), interpolation="nearest")
        ax_img.set_title(rec["id"], fontsize=9)
        ax_img.set_axis_off()
        lines = [line for turn in rec["conversations"] for line in textwrap.wrap(
            f"{'Human' if turn['from'] == 'human' else 'GPT'}: {turn['value'].replace(IMAGE_TOKEN, '').strip()}",
            width, subsequent_indent="    ")]
        ax_txt.text(0, 1, "\n".join(lines[:16]) + ("\n..." if len(lines) > 16 else ""), va="top", family="monospace",
                    fontsize=8.5, transform=ax_txt.transAxes)
        ax_txt.set_axis_off()
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
