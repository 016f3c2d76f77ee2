"""Notebook 01's counts and figures: world_statistics counts what the files hold, and each figure draws
what it promises (and saves itself when given a path)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llava_mini.world import COLORS, ImageRecord, ObjectAnnotation, generate_world, read_split  # noqa: E402
from llava_mini.world import context_text, plot_world_statistics, show_pixel_question, show_records  # noqa: E402
from llava_mini.world import show_teacher_view, world_statistics  # noqa: E402


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"train": 12}, seed=0)
    return read_split(root, "train").records


def test_statistics_count_every_object_and_caption(records):
    stats = world_statistics(records)
    n_objects = sum(len(r.objects) for r in records)
    assert sum(stats["objects per image"].values()) == len(records)
    assert sum(k * v for k, v in stats["objects per image"].items()) == n_objects
    for key in ("category", "color", "shape", "size"):
        assert sum(stats[key].values()) == n_objects, key
    assert sum(stats["caption words"].values()) == 5 * len(records)
    assert stats["category"][records[0].objects[0].category] >= 1
    # A real photo has no attributes: it adds to the categories and counts only.
    photo = ImageRecord(1, "x.jpg", 10, 10, ["A cat on a mat."], [ObjectAnnotation("cat", (1, 1, 5, 5))])
    stats = world_statistics([photo])
    assert stats["category"] == {"cat": 1} and not stats["color"] and stats["caption words"] == {5: 1}


def test_statistics_figure_has_six_panels_and_saves(records, tmp_path):
    fig = plot_world_statistics(world_statistics(records), path=tmp_path / "stats.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["objects per image", "shapes", "colours"]
    assert "caption length" in titles and any(t.startswith("categories (") for t in titles)
    colour_bars = fig.axes[2].patches
    assert {tuple(round(c, 3) for c in p.get_facecolor()[:3]) for p in colour_bars} <= {
        tuple(round(v / 255, 3) for v in rgb) for rgb in COLORS.values()}  # each colour's bar in its colour
    assert (tmp_path / "stats.png").stat().st_size > 0
    plt.close(fig)


def test_record_grid_draws_every_box_and_blanks_the_rest(records, tmp_path):
    fig = show_records(records[:5], ncols=4, path=tmp_path / "grid.png")
    assert len(fig.axes) == 8
    assert [len(ax.patches) for ax in fig.axes[:5]] == [len(r.objects) for r in records[:5]]
    assert all(not ax.images and not ax.axison for ax in fig.axes[5:])
    assert (tmp_path / "grid.png").exists()
    plt.close(fig)


def test_teacher_view_shows_both_texts(records):
    record = records[0]
    fig = show_teacher_view(record)
    texts = ["".join(t.get_text() for t in ax.texts).replace("\n  ", " ") for ax in fig.axes[1:]]
    assert texts[0].replace("\n", " ") == context_text(record, boxes=False).replace("\n", " ")
    assert all(line in texts[1] for line in context_text(record).split("\n")[-len(record.objects):])
    plt.close(fig)


def test_pixel_question_reads_the_colour_inside_the_box(records):
    record, obj = next((r, o) for r in records for o in r.objects if o.attributes["shape"] == "square")
    x, y, w, h = (int(v) for v in obj.bbox)
    fig, rgb = show_pixel_question(record, (x + 2, y + 2, w - 4, h - 4), "What colour is the square?")
    assert np.abs(np.array(rgb) - COLORS[obj.attributes["color"]]).max() < 10
    assert len(fig.axes[0].patches) == 1
    plt.close(fig)
